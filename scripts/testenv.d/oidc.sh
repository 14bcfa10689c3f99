# OpenID Connect: two real test issuers over HTTPS, and the structured authentication configuration
# that makes the kubernetes component's apiserver trust both (kubernetes.sh passes it with
# --authentication-config when the file exists; `oidc` comes before `kubernetes` in scripts/testenv).
#
#   issuer 1  ory/hydra v2.3.0 built from the Go module proxy (sqlite, one file), public API
#             https://127.0.0.1:4444, admin API http://127.0.0.1:4445 (loopback), with our login and
#             consent app (oidc/login_consent.py) on https://127.0.0.1:4446. Clients: juliarun-cli (public,
#             authorization code + PKCE, refresh tokens; the apiserver's audience), juliarun-router
#             (confidential; not an apiserver audience).
#   issuer 2  github.com/oauth2-proxy/mockoidc in a small main (oidc/issuer2/main.go), https://127.0.0.1:4447/oidc,
#             one confidential client juliarun-issuer2 (the apiserver's audience for it).
#             It also offers the device authorization grant (RFC 8628), which hydra v2.3.0 lacks (the
#             Go module proxy serves no later hydra): /oidc/device_authorization, and /oidc/device
#             where ?user_code=CODE&login_hint=USER;GROUP,... signs the device's user in.
#
# Test users are whoever the sign-in names in login_hint "USER[;GROUP,...]" (both issuers honour it; ";"
# since names may hold ":"), so `scripts/testenv token USER [GROUP...] [--issuer 1|2]` (oidc/token.py) gets
# a real ID token through the issuer's own authorization-code flow with PKCE. Kubernetes sees issuer 1's users as oidc1:<sub> with
# groups oidc1:<group>, issuer 2's as oidc2:<preferred_username> with groups oidc2:<group>; names and groups
# starting with system: are refused.
#
# Layout: $TE_HOME/oidc (CA, certificates, keys, secrets, oidc.json for token.py, authentication-config.yaml),
# $TE_RUN/oidc (hydra's database, configs, logs), $TE_BIN/hydra-<ver>, $TE_BIN/oidc-issuer2-<ver>.

_oidc_here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

HYDRA_TE_VERSION=v2.3.0
# Hydra v2.3.0 needs ory's fork of pop (upstream pop lacks SQLDB); the pseudo-version its own go.mod uses.
HYDRA_TE_POP=github.com/ory/pop/v6@v6.2.1-0.20241121111754-e5dfc0f3344b
MOCKOIDC_TE_VERSION=v0.0.0-20261103160011-e06ed0b7cb7f
OIDC_HOME=$TE_HOME/oidc
OIDC_RUN=$TE_RUN/oidc
OIDC_HYDRA_PORT=4444
OIDC_HYDRA_ADMIN_PORT=4445
OIDC_LOGIN_PORT=4446
OIDC_ISSUER2_PORT=4447
OIDC_ISSUER1_URL=https://127.0.0.1:$OIDC_HYDRA_PORT
OIDC_ISSUER1_ADMIN=http://127.0.0.1:$OIDC_HYDRA_ADMIN_PORT
OIDC_LOGIN_URL=https://127.0.0.1:$OIDC_LOGIN_PORT
OIDC_ISSUER2_URL=https://127.0.0.1:$OIDC_ISSUER2_PORT/oidc
OIDC_CLI_CLIENT=juliarun-cli
OIDC_ROUTER_CLIENT=juliarun-router
OIDC_ISSUER2_CLIENT=juliarun-issuer2
# The redirect the CLI client registers: any port on loopback matches it (RFC 8252; hydra honours it).
OIDC_CLI_REDIRECT=http://127.0.0.1/callback
OIDC_ROUTER_REDIRECT=https://127.0.0.1/oauth2/callback
# Where scripts/testenv token's sign-ins end (nothing listens there: the helper stops at the redirect).
OIDC_TOKEN_REDIRECT=http://127.0.0.1:8085/callback
OIDC_AUTHN_CONFIG=$OIDC_HOME/authentication-config.yaml
OIDC_USERNAME_PREFIX1=oidc1:
OIDC_USERNAME_PREFIX2=oidc2:

_hydra_bin() { echo "$TE_BIN/hydra-$HYDRA_TE_VERSION"; }
_issuer2_bin() { echo "$TE_BIN/oidc-issuer2-$MOCKOIDC_TE_VERSION-$(sha256sum "$_oidc_here/oidc/issuer2/main.go" | cut -c1-12)"; }
_oidc_python() { command -v python3 || te_die "python3 is not installed"; }

# --- builds ---------------------------------------------------------------------------------------

_hydra_build() {
  local bin src
  bin=$(_hydra_bin)
  [ -x "$bin" ] && return 0
  command -v go >/dev/null 2>&1 || te_die "go is not installed"
  te_apt gcc libc6-dev  # sqlite (mattn/go-sqlite3) is cgo
  src=$TE_SRC/hydra-$HYDRA_TE_VERSION
  mkdir -p "$src"
  if [ ! -f "$src/go.mod" ]; then
    (cd "$src" && go mod init juliarun.local/testenv/hydra >/dev/null 2>&1 \
      && go mod edit "-replace=github.com/gobuffalo/pop/v6=$HYDRA_TE_POP") || te_die "hydra wrapper module failed"
  fi
  te_log "building hydra $HYDRA_TE_VERSION (waits for the Go build lock; minutes on a cold cache)"
  (cd "$src" && GOMAXPROCS=1 GOFLAGS="-mod=mod -p=1" GOTOOLCHAIN=local CGO_ENABLED=1 \
    flock "$TE_HOME/go-build.lock" sh -c "
      go get github.com/ory/hydra/v2@$HYDRA_TE_VERSION &&
      go build -trimpath -tags sqlite,sqlite_omit_load_extension -o '$bin.part' \
        -ldflags '-s -w -X github.com/ory/hydra/v2/driver/config.Version=$HYDRA_TE_VERSION' \
        github.com/ory/hydra/v2") >&2 \
    || te_die "building hydra $HYDRA_TE_VERSION failed"
  mv "$bin.part" "$bin"
}

_issuer2_build() {
  local bin src
  bin=$(_issuer2_bin)
  [ -x "$bin" ] && return 0
  command -v go >/dev/null 2>&1 || te_die "go is not installed"
  src=$TE_SRC/oidc-issuer2
  mkdir -p "$src"
  cp "$_oidc_here/oidc/issuer2/main.go" "$src/main.go"
  if [ ! -f "$src/go.mod" ]; then
    (cd "$src" && go mod init juliarun.local/testenv/oidc-issuer2 >/dev/null 2>&1) || te_die "issuer2 module failed"
  fi
  rm -f "$TE_BIN"/oidc-issuer2-*  # builds of an older main.go
  te_log "building the second OIDC issuer (mockoidc $MOCKOIDC_TE_VERSION)"
  (cd "$src" && GOMAXPROCS=1 GOFLAGS="-mod=mod -p=1" GOTOOLCHAIN=local CGO_ENABLED=0 \
    flock "$TE_HOME/go-build.lock" sh -c "
      go get github.com/oauth2-proxy/mockoidc@$MOCKOIDC_TE_VERSION &&
      go build -trimpath -ldflags '-s -w' -o '$bin.part' .") >&2 \
    || te_die "building the second OIDC issuer failed"
  mv "$bin.part" "$bin"
}

# --- CA, certificates, secrets --------------------------------------------------------------------

_oidc_pki() {
  local d=$OIDC_HOME
  mkdir -p "$d"; chmod 700 "$d"
  if [ ! -s "$d/ca.crt" ]; then
    te_log "oidc: generating the test CA in $d"
    openssl genrsa -out "$d/ca.key" 2048 2>/dev/null || return 1
    openssl req -x509 -new -nodes -key "$d/ca.key" -subj "/CN=juliarun-oidc-test-ca" -days 3650 -sha256 \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -out "$d/ca.crt" 2>/dev/null || return 1
    rm -f "$d/server.crt"
  fi
  if [ ! -s "$d/server.crt" ]; then
    openssl genrsa -out "$d/server.key" 2048 2>/dev/null || return 1
    openssl req -new -key "$d/server.key" -subj "/CN=juliarun-oidc-issuers" -out "$d/server.csr" 2>/dev/null || return 1
    printf '%s\n' 'basicConstraints=critical,CA:FALSE' 'keyUsage=critical,digitalSignature,keyEncipherment' \
      'extendedKeyUsage=serverAuth' 'subjectAltName=IP:127.0.0.1,DNS:localhost' > "$d/server.ext"
    openssl x509 -req -in "$d/server.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 3650 \
      -sha256 -extfile "$d/server.ext" -out "$d/server.crt" 2>/dev/null || return 1
    rm -f "$d/server.csr"
  fi
  [ -s "$d/issuer2-signing.key" ] || openssl genrsa -out "$d/issuer2-signing.key" 2048 2>/dev/null || return 1
  local s
  for s in hydra-system-secret router-client-secret issuer2-client-secret; do
    [ -s "$d/$s" ] || { (umask 077; openssl rand -hex 24 > "$d/$s") || return 1; }
  done
  chmod 600 "$d"/*.key "$d"/*-secret
}

# --- configuration files --------------------------------------------------------------------------

_oidc_hydra_dsn() {
  echo "sqlite://$OIDC_RUN/hydra.sqlite?_fk=true&mode=rwc"
}

_oidc_hydra_config() {
  mkdir -p "$OIDC_RUN"
  # Written aside and moved over only when it differs: hydra watches the file, and a rewrite
  # in place made it read a half-written one ("immutable configuration key dsn was changed").
  cat > "$OIDC_RUN/hydra.yaml.new" <<EOF
# Written by scripts/testenv (oidc.sh) on every up; replaced only when it changed.
dsn: $(_oidc_hydra_dsn)
serve:
  public:
    host: 127.0.0.1
    port: $OIDC_HYDRA_PORT
    tls:
      enabled: true
      cert: {path: $OIDC_HOME/server.crt}
      key: {path: $OIDC_HOME/server.key}
  admin:
    host: 127.0.0.1
    port: $OIDC_HYDRA_ADMIN_PORT
    tls:
      enabled: false
urls:
  self:
    issuer: $OIDC_ISSUER1_URL
    public: $OIDC_ISSUER1_URL
  login: $OIDC_LOGIN_URL/login
  consent: $OIDC_LOGIN_URL/consent
  logout: $OIDC_LOGIN_URL/logout
secrets:
  system:
    - $(cat "$OIDC_HOME/hydra-system-secret")
oidc:
  subject_identifiers:
    supported_types: [public]
ttl:
  id_token: 1h
  access_token: 1h
  refresh_token: 720h
log:
  level: info
  leak_sensitive_values: false
# No telemetry (and no network here).
sqa:
  opt_out: true
EOF
  chmod 600 "$OIDC_RUN/hydra.yaml.new"
  if cmp -s "$OIDC_RUN/hydra.yaml.new" "$OIDC_RUN/hydra.yaml"; then
    rm -f "$OIDC_RUN/hydra.yaml.new"
  else
    mv -f "$OIDC_RUN/hydra.yaml.new" "$OIDC_RUN/hydra.yaml"
  fi
}

# What token.py needs: the CA, the issuers, their test clients.
_oidc_token_config() {
  cat > "$OIDC_HOME/oidc.json.tmp" <<EOF
{
  "ca": "$OIDC_HOME/ca.crt",
  "issuers": {
    "1": {
      "issuer": "$OIDC_ISSUER1_URL",
      "scope": "openid offline_access profile email",
      "default_client": "$OIDC_CLI_CLIENT",
      "clients": {
        "$OIDC_CLI_CLIENT": {"secret": null, "redirect_uri": "$OIDC_TOKEN_REDIRECT"},
        "$OIDC_ROUTER_CLIENT": {"secret": "$(cat "$OIDC_HOME/router-client-secret")", "redirect_uri": "$OIDC_ROUTER_REDIRECT"}
      }
    },
    "2": {
      "issuer": "$OIDC_ISSUER2_URL",
      "scope": "openid profile email groups",
      "default_client": "$OIDC_ISSUER2_CLIENT",
      "per_user_ttl": true,
      "clients": {
        "$OIDC_ISSUER2_CLIENT": {"secret": "$(cat "$OIDC_HOME/issuer2-client-secret")", "redirect_uri": "$OIDC_TOKEN_REDIRECT"}
      }
    }
  }
}
EOF
  chmod 600 "$OIDC_HOME/oidc.json.tmp"
  mv "$OIDC_HOME/oidc.json.tmp" "$OIDC_HOME/oidc.json"
}

# The apiserver's structured authentication configuration (apiserver.config.k8s.io/v1, GA in 1.34).
# Rewritten only when its content changes (kubernetes.sh restarts the apiserver on a change).
_oidc_authn_config() {
  local ca
  ca=$(sed 's/^/        /' "$OIDC_HOME/ca.crt")
  cat > "$OIDC_AUTHN_CONFIG.new" <<EOF
# Written by scripts/testenv (oidc.sh): kube-apiserver --authentication-config.
apiVersion: apiserver.config.k8s.io/v1
kind: AuthenticationConfiguration
jwt:
  - issuer:
      url: $OIDC_ISSUER1_URL
      audiences: [$OIDC_CLI_CLIENT]
      certificateAuthority: |
$ca
    claimValidationRules:
      - expression: "!claims.sub.startsWith('system:')"
        message: "user names starting with system: are reserved"
      - expression: "!has(claims.groups) || dyn(claims.groups).all(g, !g.startsWith('system:'))"
        message: "group names starting with system: are reserved"
    claimMappings:
      username: {claim: sub, prefix: "$OIDC_USERNAME_PREFIX1"}
      groups: {claim: groups, prefix: "$OIDC_USERNAME_PREFIX1"}
      uid: {claim: sub}
    userValidationRules:
      - expression: "!user.username.startsWith('system:')"
        message: "user names starting with system: are reserved"
  - issuer:
      url: $OIDC_ISSUER2_URL
      audiences: [$OIDC_ISSUER2_CLIENT]
      certificateAuthority: |
$ca
    claimValidationRules:
      - expression: "has(claims.preferred_username) && !claims.preferred_username.startsWith('system:')"
        message: "a preferred_username is required, and names starting with system: are reserved"
      - expression: "!has(claims.groups) || dyn(claims.groups).all(g, !g.startsWith('system:'))"
        message: "group names starting with system: are reserved"
    claimMappings:
      username: {claim: preferred_username, prefix: "$OIDC_USERNAME_PREFIX2"}
      groups: {claim: groups, prefix: "$OIDC_USERNAME_PREFIX2"}
      uid: {claim: sub}
    userValidationRules:
      - expression: "!user.username.startsWith('system:')"
        message: "user names starting with system: are reserved"
EOF
  if cmp -s "$OIDC_AUTHN_CONFIG.new" "$OIDC_AUTHN_CONFIG"; then
    rm -f "$OIDC_AUTHN_CONFIG.new"
  else
    mv "$OIDC_AUTHN_CONFIG.new" "$OIDC_AUTHN_CONFIG"
  fi
}

# --- hydra's clients ------------------------------------------------------------------------------

# _oidc_client JSON : create the client, or replace it when it exists (hydra keeps it in its database).
_oidc_client() {
  local body=$1 id code
  id=$(printf '%s' "$body" | sed -n 's/.*"client_id": *"\([^"]*\)".*/\1/p')
  code=$(curl -sS -o "$OIDC_RUN/client.out" -w '%{http_code}' --max-time 10 -X PUT \
    -H 'Content-Type: application/json' --data "$body" "$OIDC_ISSUER1_ADMIN/admin/clients/$id")
  if [ "$code" = 404 ]; then
    code=$(curl -sS -o "$OIDC_RUN/client.out" -w '%{http_code}' --max-time 10 -X POST \
      -H 'Content-Type: application/json' --data "$body" "$OIDC_ISSUER1_ADMIN/admin/clients")
  fi
  case "$code" in
    200|201) rm -f "$OIDC_RUN/client.out" ;;
    *) te_die "registering hydra client $id failed ($code): $(cat "$OIDC_RUN/client.out")" ;;
  esac
}

_oidc_clients() {
  _oidc_client "{\"client_id\": \"$OIDC_CLI_CLIENT\", \"client_name\": \"juliarun CLI\",
    \"token_endpoint_auth_method\": \"none\", \"grant_types\": [\"authorization_code\", \"refresh_token\"],
    \"response_types\": [\"code\"], \"scope\": \"openid offline_access profile email\",
    \"redirect_uris\": [\"$OIDC_CLI_REDIRECT\", \"http://localhost/callback\"]}"
  _oidc_client "{\"client_id\": \"$OIDC_ROUTER_CLIENT\", \"client_name\": \"juliarun router\",
    \"client_secret\": \"$(cat "$OIDC_HOME/router-client-secret")\",
    \"token_endpoint_auth_method\": \"client_secret_post\", \"grant_types\": [\"authorization_code\", \"refresh_token\"],
    \"response_types\": [\"code\"], \"scope\": \"openid offline_access profile email\",
    \"redirect_uris\": [\"$OIDC_ROUTER_REDIRECT\"]}"
}

# --- component interface --------------------------------------------------------------------------

_oidc_discovery_ok() {  # URL : the issuer's discovery document names exactly this issuer
  curl -fsS --max-time 3 --cacert "$OIDC_HOME/ca.crt" "$1/.well-known/openid-configuration" 2>/dev/null \
    | grep -q "\"issuer\": *\"${1//\//\\/}\""
}
_oidc_login_ok() { curl -fsS -o /dev/null --max-time 3 --cacert "$OIDC_HOME/ca.crt" "$OIDC_LOGIN_URL/healthz" 2>/dev/null; }

_oidc_wait() {  # NAME LOGFILE CHECK... : wait for CHECK while NAME runs
  local name=$1 logf=$2 i; shift 2
  for ((i = 0; i < 120; i++)); do
    "$@" && return 0
    te_running "$name" || { tail -n 20 "$logf" >&2; te_die "$name exited while starting (log: $logf)"; }
    sleep 0.5
  done
  te_die "$name did not come up (log: $logf)"
}

# _oidc_restart_if_changed NAME STAMP : stop NAME when it runs with another recorded STAMP; record STAMP.
_oidc_restart_if_changed() {
  local name=$1 stamp=$2 f=$OIDC_RUN/$1.stamp
  if te_running "$name" && [ "$(cat "$f" 2>/dev/null)" != "$stamp" ]; then
    te_log "oidc: $name changed, restarting it"
    te_stop "$name"
  fi
  printf '%s\n' "$stamp" > "$f"
}

oidc_up() {
  local p
  te_apt curl openssl
  _hydra_build
  _issuer2_build
  _oidc_pki || te_die "generating the OIDC test CA and certificates failed"
  mkdir -p "$OIDC_RUN"
  for p in "hydra:$OIDC_HYDRA_PORT" "hydra:$OIDC_HYDRA_ADMIN_PORT" "oidc-login:$OIDC_LOGIN_PORT" "oidc-issuer2:$OIDC_ISSUER2_PORT"; do
    te_running "${p%%:*}" || te_port_free "${p##*:}" || te_die "127.0.0.1:${p##*:} is taken by a process testenv did not start"
  done

  # Each service is restarted when what it runs changed (binary, config, code): a stamp is recorded.
  _oidc_hydra_config
  _oidc_restart_if_changed hydra "$(_hydra_bin) $(sha256sum < "$OIDC_RUN/hydra.yaml")"
  if ! te_running hydra; then
    DSN="$(_oidc_hydra_dsn)" "$(_hydra_bin)" migrate sql up -e --yes \
      >> "$OIDC_RUN/hydra-migrate.log" 2>&1 || te_die "hydra migrations failed (log: $OIDC_RUN/hydra-migrate.log)"
    te_start hydra "$OIDC_RUN/hydra.log" "$(_hydra_bin)" serve all --config "$OIDC_RUN/hydra.yaml"
  fi
  _oidc_restart_if_changed oidc-login "$(sha256sum < "$_oidc_here/oidc/login_consent.py")"
  te_start oidc-login "$OIDC_RUN/login.log" "$(_oidc_python)" -u "$_oidc_here/oidc/login_consent.py" \
    --listen "127.0.0.1:$OIDC_LOGIN_PORT" --cert "$OIDC_HOME/server.crt" --key "$OIDC_HOME/server.key" \
    --admin "$OIDC_ISSUER1_ADMIN"
  _oidc_restart_if_changed oidc-issuer2 "$(_issuer2_bin)"
  te_start oidc-issuer2 "$OIDC_RUN/issuer2.log" "$(_issuer2_bin)" -listen "127.0.0.1:$OIDC_ISSUER2_PORT" \
    -cert "$OIDC_HOME/server.crt" -key "$OIDC_HOME/server.key" -signing-key "$OIDC_HOME/issuer2-signing.key" \
    -client-id "$OIDC_ISSUER2_CLIENT" -client-secret "$(cat "$OIDC_HOME/issuer2-client-secret")"
  _oidc_wait hydra "$OIDC_RUN/hydra.log" _oidc_discovery_ok "$OIDC_ISSUER1_URL"
  _oidc_wait oidc-login "$OIDC_RUN/login.log" _oidc_login_ok
  _oidc_wait oidc-issuer2 "$OIDC_RUN/issuer2.log" _oidc_discovery_ok "$OIDC_ISSUER2_URL"
  _oidc_clients
  _oidc_token_config
  _oidc_authn_config
}

oidc_down() {
  te_stop oidc-issuer2
  te_stop oidc-login
  te_stop hydra 20
}

oidc_status() {
  printf 'oidc\t%s+mockoidc\t%s %s' "hydra-$HYDRA_TE_VERSION" "$OIDC_ISSUER1_URL" "$OIDC_ISSUER2_URL"
  te_running hydra && te_running oidc-login && te_running oidc-issuer2 && [ -s "$OIDC_HOME/oidc.json" ] \
    && _oidc_discovery_ok "$OIDC_ISSUER1_URL" && _oidc_login_ok && _oidc_discovery_ok "$OIDC_ISSUER2_URL"
}

oidc_env() {
  echo "export JULIARUN_OIDC_CA=$OIDC_HOME/ca.crt"
  echo "export JULIARUN_OIDC_ISSUER1=$OIDC_ISSUER1_URL"
  echo "export JULIARUN_OIDC_ISSUER1_ADMIN=$OIDC_ISSUER1_ADMIN"
  echo "export JULIARUN_OIDC_ISSUER1_CLIENT=$OIDC_CLI_CLIENT"
  echo "export JULIARUN_OIDC_ISSUER2=$OIDC_ISSUER2_URL"
  echo "export JULIARUN_OIDC_ISSUER2_CLIENT=$OIDC_ISSUER2_CLIENT"
  echo "export JULIARUN_OIDC_ROUTER_CLIENT=$OIDC_ROUTER_CLIENT"
  echo "export JULIARUN_OIDC_LOGIN_URL=$OIDC_LOGIN_URL"
  echo "export JULIARUN_OIDC_CONFIG=$OIDC_HOME/oidc.json"
  echo "export JULIARUN_OIDC_AUTHN_CONFIG=$OIDC_AUTHN_CONFIG"
}

# oidc_token ARGS... : scripts/testenv token (see oidc/token.py).
oidc_token() {
  [ -s "$OIDC_HOME/oidc.json" ] || te_die "the oidc component is not set up (scripts/testenv up oidc)"
  "$(_oidc_python)" "$_oidc_here/oidc/token.py" "$OIDC_HOME/oidc.json" "$@"
}
