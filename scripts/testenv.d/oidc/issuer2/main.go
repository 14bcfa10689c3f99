// Command issuer2 is the test environment's second OpenID Connect issuer (scripts/testenv.d/oidc.sh):
// github.com/oauth2-proxy/mockoidc served over HTTPS on a fixed address, with a signing key kept on
// disk (tokens stay verifiable across restarts) and one confidential client.
//
// There is no login page: each authorization request names its test user in login_hint as
// "USER[;GROUP,GROUP...]" (";": names may hold ":"). The ID token then carries sub "issuer2|USER", preferred_username USER,
// email USER@issuer2.test and groups GROUPs (with the scopes profile, email, groups). A request
// without login_hint is refused (mockoidc would otherwise sign in its default user). The optional
// parameter id_token_ttl=SECONDS shortens that one user's ID token (for expiry tests).
//
// It also offers the device authorization grant (RFC 8628), which mockoidc lacks (deviceGrants below): a
// device asks /oidc/device_authorization for a device code and a user code, the user opens
// /oidc/device and enters the user code (headlessly: GET /oidc/device?user_code=CODE&login_hint=
// USER;GROUP,... signs USER in; &deny=1 refuses), and the device polls the token endpoint with
// grant_type urn:ietf:params:oauth:grant-type:device_code until it gets the tokens.
package main

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"html"
	"io"
	"log"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/oauth2-proxy/mockoidc"
)

// testUser is a mockoidc user whose ID token may expire sooner than the server's AccessTTL.
type testUser struct {
	mockoidc.MockUser
	ttl time.Duration
}

func (u *testUser) Claims(scope []string, claims *mockoidc.IDTokenClaims) (jwt.Claims, error) {
	if u.ttl > 0 && claims.IssuedAt != nil {
		claims.ExpiresAt = jwt.NewNumericDate(claims.IssuedAt.Add(u.ttl))
	}
	return u.MockUser.Claims(scope, claims)
}

// parseHint reads "USER[;GROUP,GROUP...]".
func parseHint(hint string, ttl time.Duration) (*testUser, error) {
	name, groupList, _ := strings.Cut(hint, ";")
	if name == "" {
		return nil, errors.New("login_hint names no user")
	}
	var groups []string
	for _, g := range strings.Split(groupList, ",") {
		if g = strings.TrimSpace(g); g != "" {
			groups = append(groups, g)
		}
	}
	return &testUser{
		MockUser: mockoidc.MockUser{
			Subject:           "issuer2|" + name,
			Email:             name + "@issuer2.test",
			EmailVerified:     true,
			PreferredUsername: name,
			Groups:            groups,
		},
		ttl: ttl,
	}, nil
}

func readRSAKey(path string) (*rsa.PrivateKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM block in " + path)
	}
	if key, err := x509.ParsePKCS1PrivateKey(block.Bytes); err == nil {
		return key, nil
	}
	parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	key, ok := parsed.(*rsa.PrivateKey)
	if !ok {
		return nil, errors.New("the signing key is not an RSA key")
	}
	return key, nil
}

func main() {
	listen := flag.String("listen", "127.0.0.1:4447", "host:port to serve HTTPS on (the issuer is https://HOST:PORT/oidc)")
	certFile := flag.String("cert", "", "TLS certificate (PEM)")
	keyFile := flag.String("key", "", "TLS private key (PEM)")
	signingKey := flag.String("signing-key", "", "RSA private key (PEM) that signs the tokens")
	clientID := flag.String("client-id", "juliarun-issuer2", "the one OAuth2 client's id")
	clientSecret := flag.String("client-secret", "", "the one OAuth2 client's secret")
	ttl := flag.Duration("token-ttl", time.Hour, "access and ID token lifetime")
	deviceInterval := flag.Duration("device-interval", time.Second, "device grant: least time between polls")
	deviceTTL := flag.Duration("device-ttl", 10*time.Minute, "device grant: how long a user code stays valid")
	flag.Parse()
	if *certFile == "" || *keyFile == "" || *signingKey == "" || *clientSecret == "" {
		log.Fatal("-cert, -key, -signing-key and -client-secret are required")
	}

	key, err := readRSAKey(*signingKey)
	if err != nil {
		log.Fatalf("signing key: %v", err)
	}
	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		log.Fatalf("TLS certificate: %v", err)
	}
	m, err := mockoidc.NewServer(key)
	if err != nil {
		log.Fatal(err)
	}
	m.ClientID = *clientID
	m.ClientSecret = *clientSecret
	m.AccessTTL = *ttl
	m.CodeChallengeMethodsSupported = []string{"S256"}

	// Queue the request's user right before mockoidc's authorize handler pops it, one request
	// at a time, so concurrent sign-ins never swap users.
	var mu sync.Mutex
	if err := m.AddMiddleware(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(rw http.ResponseWriter, req *http.Request) {
			if req.URL.Path != mockoidc.AuthorizationEndpoint {
				next.ServeHTTP(rw, req)
				return
			}
			if err := req.ParseForm(); err != nil {
				http.Error(rw, err.Error(), http.StatusBadRequest)
				return
			}
			var userTTL time.Duration
			if s := req.Form.Get("id_token_ttl"); s != "" {
				secs, err := strconv.Atoi(s)
				if err != nil || secs <= 0 {
					http.Error(rw, "id_token_ttl must be a positive number of seconds", http.StatusBadRequest)
					return
				}
				userTTL = time.Duration(secs) * time.Second
			}
			user, err := parseHint(req.Form.Get("login_hint"), userTTL)
			if err != nil {
				http.Error(rw, "login_required: "+err.Error(), http.StatusBadRequest)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			m.UserQueue.Push(user)
			next.ServeHTTP(rw, req)
		})
	}); err != nil {
		log.Fatal(err)
	}

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	tlsConfig := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	// mockoidc serves only its own endpoints: it "starts" on a listener that never accepts (so
	// its issuer URL names the real address), and our server answers the device grant's
	// endpoints and hands everything else to mockoidc's handler.
	if err := m.Start(&idleListener{addr: ln.Addr(), done: make(chan struct{})}, tlsConfig); err != nil {
		log.Fatal(err)
	}
	devices := newDeviceGrants(m, &mu, *deviceInterval, *deviceTTL)
	server := &http.Server{Handler: devices.handler(m.Server.Handler), TLSConfig: tlsConfig}
	go func() {
		if err := server.Serve(tls.NewListener(ln, tlsConfig)); err != nil && err != http.ErrServerClosed {
			log.Fatal(err)
		}
	}()
	log.Printf("issuer %s (client %s)", m.Issuer(), m.ClientID)

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	<-stop
	if err := server.Shutdown(context.Background()); err != nil {
		log.Print(err)
	}
}

// idleListener is a net.Listener that never accepts: mockoidc is started on it (for its handler
// and its issuer URL) while our own server serves the real listener.
type idleListener struct {
	addr net.Addr
	done chan struct{}
	once sync.Once
}

func (l *idleListener) Accept() (net.Conn, error) {
	<-l.done
	return nil, net.ErrClosed
}

func (l *idleListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *idleListener) Addr() net.Addr { return l.addr }

// The device authorization grant (RFC 8628).
const (
	deviceAuthorizationPath = "/oidc/device_authorization"
	deviceVerificationPath  = "/oidc/device"
	deviceCodeGrant         = "urn:ietf:params:oauth:grant-type:device_code"
	userCodeAlphabet        = "BCDFGHJKLMNPQRSTVWXZ" // RFC 8628 §6.1: no vowels, no look-alikes
)

type deviceGrant struct {
	deviceCode string
	scope      string
	ttl        time.Duration // the user's ID token lifetime (id_token_ttl), 0: the server's
	expires    time.Time
	interval   time.Duration
	lastPoll   time.Time
	session    *mockoidc.Session // set once the user signed in
	denied     bool
}

type deviceGrants struct {
	m        *mockoidc.MockOIDC
	mu       *sync.Mutex // mockoidc's session store is not safe for concurrent use
	interval time.Duration
	ttl      time.Duration
	byDevice map[string]*deviceGrant
	byUser   map[string]*deviceGrant
}

func newDeviceGrants(m *mockoidc.MockOIDC, mu *sync.Mutex, interval, ttl time.Duration) *deviceGrants {
	return &deviceGrants{m: m, mu: mu, interval: interval, ttl: ttl,
		byDevice: map[string]*deviceGrant{}, byUser: map[string]*deviceGrant{}}
}

func randomString(n int, alphabet string) string {
	buf := make([]byte, n)
	if _, err := rand.Read(buf); err != nil {
		panic(err)
	}
	out := make([]byte, n)
	for i, b := range buf {
		out[i] = alphabet[int(b)%len(alphabet)]
	}
	return string(out)
}

func oauthError(rw http.ResponseWriter, status int, code, description string) {
	rw.Header().Set("Content-Type", "application/json")
	rw.Header().Set("Cache-Control", "no-store")
	rw.WriteHeader(status)
	_ = json.NewEncoder(rw).Encode(map[string]string{"error": code, "error_description": description})
}

// handler serves the device grant's endpoints, adds it to the discovery document and the token
// endpoint, and hands every other request to next (mockoidc).
func (d *deviceGrants) handler(next http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc(deviceAuthorizationPath, d.authorize)
	mux.HandleFunc(deviceVerificationPath, d.verify)
	mux.HandleFunc(mockoidc.TokenEndpoint, func(rw http.ResponseWriter, req *http.Request) {
		if err := req.ParseForm(); err != nil {
			oauthError(rw, http.StatusBadRequest, "invalid_request", err.Error())
			return
		}
		if req.Form.Get("grant_type") == deviceCodeGrant {
			d.token(rw, req)
			return
		}
		next.ServeHTTP(rw, req)
	})
	mux.HandleFunc(mockoidc.DiscoveryEndpoint, func(rw http.ResponseWriter, req *http.Request) {
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, req)
		var doc map[string]any
		if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &doc) != nil {
			rw.WriteHeader(rec.Code)
			_, _ = rw.Write(rec.Body.Bytes())
			return
		}
		doc["device_authorization_endpoint"] = d.m.Issuer() + "/device_authorization"
		grants, _ := doc["grant_types_supported"].([]any)
		doc["grant_types_supported"] = append(grants, deviceCodeGrant)
		rw.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(rw).Encode(doc)
	})
	mux.Handle("/", next)
	return mux
}

func (d *deviceGrants) clientOK(rw http.ResponseWriter, req *http.Request) bool {
	if req.Form.Get("client_id") != d.m.ClientID || req.Form.Get("client_secret") != d.m.ClientSecret {
		oauthError(rw, http.StatusUnauthorized, "invalid_client", "unknown client or wrong secret")
		return false
	}
	return true
}

func (d *deviceGrants) authorize(rw http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost {
		oauthError(rw, http.StatusMethodNotAllowed, "invalid_request", "POST only")
		return
	}
	if err := req.ParseForm(); err != nil {
		oauthError(rw, http.StatusBadRequest, "invalid_request", err.Error())
		return
	}
	if !d.clientOK(rw, req) {
		return
	}
	scope := req.Form.Get("scope")
	if scope == "" {
		scope = "openid"
	}
	var userTTL time.Duration
	if s := req.Form.Get("id_token_ttl"); s != "" {
		secs, err := strconv.Atoi(s)
		if err != nil || secs <= 0 {
			oauthError(rw, http.StatusBadRequest, "invalid_request", "id_token_ttl must be a positive number of seconds")
			return
		}
		userTTL = time.Duration(secs) * time.Second
	}
	g := &deviceGrant{
		deviceCode: randomString(43, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"),
		scope:      scope,
		ttl:        userTTL,
		expires:    time.Now().Add(d.ttl),
		interval:   d.interval,
	}
	code := randomString(8, userCodeAlphabet)
	userCode := code[:4] + "-" + code[4:]
	d.mu.Lock()
	d.byDevice[g.deviceCode] = g
	d.byUser[userCode] = g
	d.mu.Unlock()
	verification := d.m.Issuer() + "/device"
	rw.Header().Set("Content-Type", "application/json")
	rw.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(rw).Encode(map[string]any{
		"device_code":               g.deviceCode,
		"user_code":                 userCode,
		"verification_uri":          verification,
		"verification_uri_complete": verification + "?user_code=" + url.QueryEscape(userCode),
		"expires_in":                int(d.ttl.Seconds()),
		"interval":                  int(math.Ceil(d.interval.Seconds())),
	})
}

const devicePage = `<!doctype html><title>Sign in a device</title>
<form method="get" action="%s"><p>Code shown on your device: <input name="user_code" value="%s"></p>
<p>Test user (USER;GROUP,...): <input name="login_hint"></p><button>Sign in</button></form>`

func (d *deviceGrants) verify(rw http.ResponseWriter, req *http.Request) {
	if err := req.ParseForm(); err != nil {
		http.Error(rw, err.Error(), http.StatusBadRequest)
		return
	}
	userCode := strings.ToUpper(strings.TrimSpace(req.Form.Get("user_code")))
	hint := req.Form.Get("login_hint")
	if userCode == "" || (hint == "" && req.Form.Get("deny") == "") {
		rw.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprintf(rw, devicePage, deviceVerificationPath, html.EscapeString(userCode))
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	g := d.byUser[userCode]
	if g == nil || time.Now().After(g.expires) || g.session != nil || g.denied {
		http.Error(rw, "unknown, used or expired code", http.StatusBadRequest)
		return
	}
	if req.Form.Get("deny") != "" {
		g.denied = true
		delete(d.byUser, userCode)
		_, _ = io.WriteString(rw, "sign-in refused; the device will be told\n")
		return
	}
	user, err := parseHint(hint, g.ttl)
	if err != nil {
		http.Error(rw, "login_required: "+err.Error(), http.StatusBadRequest)
		return
	}
	session, err := d.m.SessionStore.NewSession(g.scope, "", user, "", "")
	if err != nil {
		http.Error(rw, err.Error(), http.StatusInternalServerError)
		return
	}
	g.session = session
	delete(d.byUser, userCode)
	fmt.Fprintf(rw, "signed in as %s; return to your device\n", user.PreferredUsername)
}

func (d *deviceGrants) token(rw http.ResponseWriter, req *http.Request) {
	if !d.clientOK(rw, req) {
		return
	}
	d.mu.Lock()
	g := d.byDevice[req.Form.Get("device_code")]
	if g == nil {
		d.mu.Unlock()
		oauthError(rw, http.StatusBadRequest, "invalid_grant", "unknown device_code")
		return
	}
	now := time.Now()
	switch {
	case now.After(g.expires):
		delete(d.byDevice, g.deviceCode)
		d.mu.Unlock()
		oauthError(rw, http.StatusBadRequest, "expired_token", "the device code expired; start again")
		return
	case g.denied:
		delete(d.byDevice, g.deviceCode)
		d.mu.Unlock()
		oauthError(rw, http.StatusBadRequest, "access_denied", "the user refused the sign-in")
		return
	case g.session == nil:
		tooSoon := !g.lastPoll.IsZero() && now.Sub(g.lastPoll) < g.interval
		g.lastPoll = now
		if tooSoon {
			g.interval += 5 * time.Second // RFC 8628 §3.5
			d.mu.Unlock()
			oauthError(rw, http.StatusBadRequest, "slow_down", "poll less often")
			return
		}
		d.mu.Unlock()
		oauthError(rw, http.StatusBadRequest, "authorization_pending", "the user has not signed in yet")
		return
	}
	delete(d.byDevice, g.deviceCode)
	// mockoidc issues the tokens for the signed-in session as for an authorization code.
	req.Form.Set("grant_type", "authorization_code")
	req.Form.Set("code", g.session.SessionID)
	d.m.Token(rw, req)
	d.mu.Unlock()
}
