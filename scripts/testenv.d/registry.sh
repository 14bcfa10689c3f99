# Container registry: Debian's docker-registry (distribution 2.8) with our own config: plain HTTP
# on 127.0.0.1:5000, no auth, storage under $TE_RUN/registry (kept across down/up).
# A second instance on 127.0.0.1:5001 requires a login (htpasswd, bcrypt entry made with
# apache2-utils' htpasswd): user "juliarun", a random password generated on its first up and
# kept in $TE_RUN/registry-auth/password; storage under $TE_RUN/registry-auth. Both instances are
# started (and stopped) independently: `up` leaves a running one alone.
# The package's own service (init script, htpasswd auth, also on :5000) is stopped and disabled.

REGISTRY_ADDR=127.0.0.1:5000
REGISTRY_NAME=localhost:5000   # what images are tagged with; Docker treats 127.0.0.0/8 as insecure
REGISTRY_DIR=$TE_RUN/registry

REGISTRY_AUTH_ADDR=127.0.0.1:5001
REGISTRY_AUTH_NAME=localhost:5001
REGISTRY_AUTH_DIR=$TE_RUN/registry-auth
REGISTRY_AUTH_USER=juliarun

_registry_probe() { curl -fsS --max-time 3 -o /dev/null "http://$REGISTRY_ADDR/v2/" 2>/dev/null; }

# The auth instance answers /v2/ with 401 without credentials and 200 with them.
_registry_auth_password() { cat "$REGISTRY_AUTH_DIR/password" 2>/dev/null; }
_registry_auth_probe() {
  local pw
  pw=$(_registry_auth_password) || return 1
  [ "$(curl -sS --max-time 3 -o /dev/null -w '%{http_code}' "http://$REGISTRY_AUTH_ADDR/v2/" 2>/dev/null)" = 401 ] \
    && curl -fsS --max-time 3 -o /dev/null -u "$REGISTRY_AUTH_USER:$pw" "http://$REGISTRY_AUTH_ADDR/v2/" 2>/dev/null
}

# Stop and disable the service the package's postinst may have started with its own config.
_registry_stop_packaged() {
  [ -x /etc/init.d/docker-registry ] || return 0
  local pidf=/var/run/docker-registry.pid pid i
  pid=$(cat "$pidf" 2>/dev/null || true)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    te_log "registry: stopping the packaged docker-registry service (pid $pid)"
    /etc/init.d/docker-registry stop >/dev/null 2>&1 || true
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$pidf"
  fi
  if ls /etc/rc[2-5].d/S*docker-registry >/dev/null 2>&1; then
    update-rc.d docker-registry disable >/dev/null 2>&1 || true
  fi
}

_registry_config() {  # DIR ADDR [AUTH-BLOCK]
  cat > "$1/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
  fields:
    service: registry
storage:
  filesystem:
    rootdirectory: $1/data
  cache:
    blobdescriptor: inmemory
  delete:
    enabled: true
http:
  addr: $2
  headers:
    X-Content-Type-Options: [nosniff]
${3:-}
EOF
}

_registry_up_plain() {
  if te_running registry; then
    te_wait_http "http://$REGISTRY_ADDR/v2/" 30 && return 0
    te_die "registry: pid $(cat "$(te_pidfile registry)") runs but /v2/ does not answer"
  fi
  if ! te_port_free 5000; then
    te_die "registry: something else listens on :5000 (not started by testenv); stop it first"
  fi
  mkdir -p "$REGISTRY_DIR/data"
  _registry_config "$REGISTRY_DIR" "$REGISTRY_ADDR"
  te_start registry "$REGISTRY_DIR/registry.log" docker-registry serve "$REGISTRY_DIR/config.yml"
  te_wait_http "http://$REGISTRY_ADDR/v2/" 30 \
    || te_die "registry: /v2/ did not answer; see $REGISTRY_DIR/registry.log"
}

_registry_up_auth() {
  local i
  if te_running registry-auth; then
    for ((i = 0; i < 60; i++)); do _registry_auth_probe && return 0; sleep 0.5; done
    te_die "registry-auth: pid $(cat "$(te_pidfile registry-auth)") runs but /v2/ does not check logins"
  fi
  if ! te_port_free "${REGISTRY_AUTH_ADDR##*:}"; then
    te_die "registry-auth: something else listens on $REGISTRY_AUTH_ADDR (not started by testenv)"
  fi
  te_apt apache2-utils
  mkdir -p "$REGISTRY_AUTH_DIR/data"
  if [ ! -s "$REGISTRY_AUTH_DIR/password" ]; then
    (umask 077 && head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$REGISTRY_AUTH_DIR/password")
  fi
  # bcrypt: the only hash docker-registry's htpasswd accepts.
  htpasswd -Bbn "$REGISTRY_AUTH_USER" "$(_registry_auth_password)" > "$REGISTRY_AUTH_DIR/htpasswd" \
    || te_die "registry-auth: htpasswd failed"
  _registry_config "$REGISTRY_AUTH_DIR" "$REGISTRY_AUTH_ADDR" "auth:
  htpasswd:
    realm: juliarun-testenv
    path: $REGISTRY_AUTH_DIR/htpasswd"
  te_start registry-auth "$REGISTRY_AUTH_DIR/registry.log" \
    docker-registry serve "$REGISTRY_AUTH_DIR/config.yml"
  for ((i = 0; i < 60; i++)); do _registry_auth_probe && return 0; sleep 0.5; done
  te_die "registry-auth: /v2/ did not check logins; see $REGISTRY_AUTH_DIR/registry.log"
}

registry_up() {
  te_apt docker-registry
  _registry_stop_packaged
  _registry_up_plain
  _registry_up_auth
}

registry_down() {
  te_stop registry-auth 20
  te_stop registry 20
}

registry_status() {
  local v
  # "docker-registry github.com/docker/distribution 2.8.2+ds1"
  v=$(docker-registry --version 2>/dev/null | awk '{print $3}') || true
  printf 'registry\t%s\thttp://%s, auth http://%s' "${v:--}" "$REGISTRY_ADDR" "$REGISTRY_AUTH_ADDR"
  _registry_probe && _registry_auth_probe
}

registry_env() {
  echo "export JULIARUN_REGISTRY=$REGISTRY_NAME"
  # The instance that checks logins (htpasswd): its name, user and password.
  echo "export JULIARUN_AUTH_REGISTRY=$REGISTRY_AUTH_NAME"
  echo "export JULIARUN_AUTH_REGISTRY_USER=$REGISTRY_AUTH_USER"
  echo "export JULIARUN_AUTH_REGISTRY_PASSWORD=$(_registry_auth_password)"
}
