# InfluxDB 1.8.10: influxd built from its Go module through a wrapper module (cached binary in
# $TE_BIN), Flux and the v2 compatibility API on, auth off, on 127.0.0.1:8086, data under
# $TE_RUN/influxdb, database "juliarun". influxdb-client reaches it with token ":" (auth is off;
# "user:password" when it is on), org "-", bucket "db/retention".
# A second instance with `auth-enabled = true` listens on 127.0.0.1:8087 (RPC :8089, data under
# $TE_RUN/influxdb-auth, same database): admin user "juliarun", a random password generated on
# its first up and kept in $TE_RUN/influxdb-auth/password. `up` leaves a running instance alone.
INFLUX_TE_VERSION=1.8.10
INFLUX_TE_PORT=8086
INFLUX_TE_RPC_PORT=8088
INFLUX_TE_URL=http://127.0.0.1:$INFLUX_TE_PORT
INFLUX_TE_DB=juliarun

INFLUX_AUTH_PORT=8087
INFLUX_AUTH_RPC_PORT=8089
INFLUX_AUTH_URL=http://127.0.0.1:$INFLUX_AUTH_PORT
INFLUX_AUTH_USER=juliarun

_influx_bin() { echo "$TE_BIN/influxd-$INFLUX_TE_VERSION"; }
_influx_run() { echo "$TE_RUN/influxdb"; }
_influx_auth_run() { echo "$TE_RUN/influxdb-auth"; }
_influx_auth_password() { cat "$(_influx_auth_run)/password" 2>/dev/null; }

_influx_build() {
  local bin src
  bin=$(_influx_bin)
  [ -x "$bin" ] && return 0
  command -v go >/dev/null 2>&1 || te_die "go is not installed"
  te_apt gcc libc6-dev
  src=$TE_SRC/influxdb-$INFLUX_TE_VERSION
  mkdir -p "$src"
  if [ ! -f "$src/go.mod" ]; then
    (cd "$src" && go mod init juliarun.local/testenv/influxd >/dev/null 2>&1) || te_die "go mod init failed"
  fi
  cat > "$src/tools.go" <<'EOF'
//go:build tools

// Package tools pins influxd as a dependency of this wrapper module (never compiled).
package tools

import _ "github.com/influxdata/influxdb/cmd/influxd"
EOF
  te_log "building influxd $INFLUX_TE_VERSION (waits for the Go build lock)"
  (cd "$src" && te_go_locked sh -c "
      go get github.com/influxdata/influxdb/cmd/influxd@v$INFLUX_TE_VERSION &&
      go build -trimpath -o '$bin.part' \
        -ldflags '-s -w -X main.version=$INFLUX_TE_VERSION -X main.branch=1.8 -X main.commit=v$INFLUX_TE_VERSION' \
        github.com/influxdata/influxdb/cmd/influxd") >&2 \
    || te_die "building influxd $INFLUX_TE_VERSION failed"
  mv "$bin.part" "$bin"
}

_influx_configure() {  # RUN-DIR HTTP-PORT RPC-PORT AUTH(true|false)
  local run=$1
  mkdir -p "$run/meta" "$run/data" "$run/wal"
  cat > "$run/influxdb.conf" <<EOF
# Written by scripts/testenv (influxdb.sh); rewritten on every up.
reporting-disabled = true
bind-address = "127.0.0.1:$3"

[meta]
  dir = "$run/meta"

[data]
  dir = "$run/data"
  wal-dir = "$run/wal"
  query-log-enabled = false

[monitor]
  store-enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:$2"
  auth-enabled = $4
  flux-enabled = true
  log-enabled = false
EOF
}

_influx_ping() { curl -fsS -o /dev/null --max-time 2 "${1:-$INFLUX_TE_URL}/ping" 2>/dev/null; }

# The auth instance: /ping answers, a query without credentials is refused, one with them runs.
_influx_auth_probe() {
  local pw
  pw=$(_influx_auth_password) || return 1
  _influx_ping "$INFLUX_AUTH_URL" \
    && [ "$(curl -sS -o /dev/null -w '%{http_code}' --max-time 3 "$INFLUX_AUTH_URL/query" \
      --data-urlencode 'q=SHOW DATABASES' 2>/dev/null)" = 401 ] \
    && curl -fsS -o /dev/null --max-time 3 -u "$INFLUX_AUTH_USER:$pw" "$INFLUX_AUTH_URL/query" \
      --data-urlencode 'q=SHOW DATABASES' 2>/dev/null
}

_influx_up_plain() {
  if te_running influxdb && _influx_ping; then return 0; fi
  if ! te_running influxdb && ! te_port_free "$INFLUX_TE_PORT"; then
    te_die "127.0.0.1:$INFLUX_TE_PORT is taken by a process testenv did not start"
  fi
  te_apt curl
  _influx_build
  local run i
  run=$(_influx_run)
  if ! te_running influxdb; then
    _influx_configure "$run" "$INFLUX_TE_PORT" "$INFLUX_TE_RPC_PORT" false
    te_start influxdb "$run/influxd.log" "$(_influx_bin)" run -config "$run/influxdb.conf"
  fi
  for ((i = 0; i < 120; i++)); do
    _influx_ping && break
    te_running influxdb || { tail -n 20 "$run/influxd.log" >&2; te_die "influxd exited while starting"; }
    sleep 0.5
  done
  _influx_ping || te_die "influxd did not answer on $INFLUX_TE_URL (log: $run/influxd.log)"
  curl -fsS -o /dev/null --max-time 10 -XPOST "$INFLUX_TE_URL/query" \
    --data-urlencode "q=CREATE DATABASE $INFLUX_TE_DB" || te_die "cannot create database $INFLUX_TE_DB"
}

_influx_up_auth() {
  if te_running influxdb-auth && _influx_auth_probe; then return 0; fi
  if ! te_running influxdb-auth && ! te_port_free "$INFLUX_AUTH_PORT"; then
    te_die "127.0.0.1:$INFLUX_AUTH_PORT is taken by a process testenv did not start"
  fi
  local run i pw code
  run=$(_influx_auth_run)
  mkdir -p "$run"
  if [ ! -s "$run/password" ]; then
    (umask 077 && head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$run/password")
  fi
  pw=$(_influx_auth_password)
  if ! te_running influxdb-auth; then
    _influx_configure "$run" "$INFLUX_AUTH_PORT" "$INFLUX_AUTH_RPC_PORT" true
    te_start influxdb-auth "$run/influxd.log" "$(_influx_bin)" run -config "$run/influxdb.conf"
  fi
  for ((i = 0; i < 120; i++)); do
    _influx_ping "$INFLUX_AUTH_URL" && break
    te_running influxdb-auth || { tail -n 20 "$run/influxd.log" >&2; te_die "influxd (auth) exited while starting"; }
    sleep 0.5
  done
  _influx_ping "$INFLUX_AUTH_URL" || te_die "influxd did not answer on $INFLUX_AUTH_URL (log: $run/influxd.log)"
  # The first admin user may be made without credentials, only while there is no user at all.
  code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 10 -u "$INFLUX_AUTH_USER:$pw" \
    "$INFLUX_AUTH_URL/query" --data-urlencode 'q=SHOW USERS')
  if [ "$code" != 200 ]; then
    curl -fsS -o /dev/null --max-time 10 -XPOST "$INFLUX_AUTH_URL/query" --data-urlencode \
      "q=CREATE USER $INFLUX_AUTH_USER WITH PASSWORD '$pw' WITH ALL PRIVILEGES" \
      || te_die "cannot create the admin user on $INFLUX_AUTH_URL (a user with another password exists? remove $run)"
  fi
  curl -fsS -o /dev/null --max-time 10 -XPOST -u "$INFLUX_AUTH_USER:$pw" "$INFLUX_AUTH_URL/query" \
    --data-urlencode "q=CREATE DATABASE $INFLUX_TE_DB" || te_die "cannot create database $INFLUX_TE_DB on $INFLUX_AUTH_URL"
  _influx_auth_probe || te_die "influxd on $INFLUX_AUTH_URL does not check credentials"
}

influxdb_up() {
  _influx_up_plain
  _influx_up_auth
}

influxdb_down() {
  te_stop influxdb-auth 30
  te_stop influxdb 30
  local i
  for ((i = 0; i < 50; i++)); do
    te_port_free "$INFLUX_TE_PORT" && te_port_free "$INFLUX_TE_RPC_PORT" \
      && te_port_free "$INFLUX_AUTH_PORT" && te_port_free "$INFLUX_AUTH_RPC_PORT" && return 0
    sleep 0.2
  done
  te_log "warning: something still listens on 127.0.0.1:$INFLUX_TE_PORT/:$INFLUX_TE_RPC_PORT/:$INFLUX_AUTH_PORT/:$INFLUX_AUTH_RPC_PORT"
}

influxdb_status() {
  local version
  if te_running influxdb && _influx_ping; then
    version=$(curl -fsS -I --max-time 2 "$INFLUX_TE_URL/ping" 2>/dev/null \
      | tr -d '\r' | sed -n 's/^[Xx]-[Ii]nfluxdb-[Vv]ersion: *//p')
    printf 'influxdb\t%s\t%s, auth %s' "${version:-?}" "$INFLUX_TE_URL" "$INFLUX_AUTH_URL"
    te_running influxdb-auth && _influx_auth_probe
    return
  fi
  printf 'influxdb\t%s\t%s, auth %s' "$INFLUX_TE_VERSION" "$INFLUX_TE_URL" "$INFLUX_AUTH_URL"
  return 1
}

influxdb_env() {
  echo "export JULIARUN_INFLUX_URL=$INFLUX_TE_URL"
  echo "export JULIARUN_INFLUX_TOKEN=:"
  echo "export JULIARUN_INFLUX_ORG=-"
  echo "export JULIARUN_INFLUX_BUCKET=$INFLUX_TE_DB/autogen"
  # The instance with auth on: same org and bucket, token "user:password".
  echo "export JULIARUN_AUTH_INFLUX_URL=$INFLUX_AUTH_URL"
  echo "export JULIARUN_AUTH_INFLUX_TOKEN=$INFLUX_AUTH_USER:$(_influx_auth_password)"
}
