// Command issuer2 is the test environment's second OpenID Connect issuer (scripts/testenv.d/oidc.sh):
// github.com/oauth2-proxy/mockoidc served over HTTPS on a fixed address, with a signing key kept on
// disk (tokens stay verifiable across restarts) and one confidential client.
//
// There is no login page: each authorization request names its test user in login_hint as
// "USER[;GROUP,GROUP...]" (";": names may hold ":"). The ID token then carries sub "issuer2|USER", preferred_username USER,
// email USER@issuer2.test and groups GROUPs (with the scopes profile, email, groups). A request
// without login_hint is refused (mockoidc would otherwise sign in its default user). The optional
// parameter id_token_ttl=SECONDS shortens that one user's ID token (for expiry tests).
package main

import (
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"log"
	"net"
	"net/http"
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
	if err := m.Start(tls.NewListener(ln, tlsConfig), tlsConfig); err != nil {
		log.Fatal(err)
	}
	log.Printf("issuer %s (client %s)", m.Issuer(), m.ClientID)

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	<-stop
	if err := m.Shutdown(); err != nil {
		log.Print(err)
	}
}
