# InfluxDB 1.8.10: influxd built from its Go module through a wrapper module (cached binary in
# $TE_BIN), Flux and the v2 compatibility API on, auth off, on 127.0.0.1:8086, data under
# $TE_RUN/influxdb, database "juliarun". influxdb-client reaches it with token ":" (auth is off;
# "user:password" when it is on), org "-", bucket "db/retention".
INFLUX_TE_VERSION=1.8.10
INFLUX_TE_PORT=8086
INFLUX_TE_RPC_PORT=8088
INFLUX_TE_URL=http://127.0.0.1:$INFLUX_TE_PORT
INFLUX_TE_DB=juliarun

_influx_bin() { echo "$TE_BIN/influxd-$INFLUX_TE_VERSION"; }
_influx_run() { echo "$TE_RUN/influxdb"; }

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

_influx_configure() {
  local run
  run=$(_influx_run)
  mkdir -p "$run/meta" "$run/data" "$run/wal"
  cat > "$run/influxdb.conf" <<EOF
# Written by scripts/testenv (influxdb.sh); rewritten on every up.
reporting-disabled = true
bind-address = "127.0.0.1:$INFLUX_TE_RPC_PORT"

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
  bind-address = "127.0.0.1:$INFLUX_TE_PORT"
  auth-enabled = false
  flux-enabled = true
  log-enabled = false
EOF
}

_influx_ping() { curl -fsS -o /dev/null --max-time 2 "$INFLUX_TE_URL/ping" 2>/dev/null; }

influxdb_up() {
  if te_running influxdb && _influx_ping; then return 0; fi
  if ! te_running influxdb && ! te_port_free "$INFLUX_TE_PORT"; then
    te_die "127.0.0.1:$INFLUX_TE_PORT is taken by a process testenv did not start"
  fi
  te_apt curl
  _influx_build
  local run i
  run=$(_influx_run)
  if ! te_running influxdb; then
    _influx_configure
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

influxdb_down() {
  te_stop influxdb 30
  local i
  for ((i = 0; i < 50; i++)); do
    te_port_free "$INFLUX_TE_PORT" && te_port_free "$INFLUX_TE_RPC_PORT" && return 0
    sleep 0.2
  done
  te_log "warning: something still listens on 127.0.0.1:$INFLUX_TE_PORT or :$INFLUX_TE_RPC_PORT"
}

influxdb_status() {
  local version
  if te_running influxdb && _influx_ping; then
    version=$(curl -fsS -I --max-time 2 "$INFLUX_TE_URL/ping" 2>/dev/null \
      | tr -d '\r' | sed -n 's/^[Xx]-[Ii]nfluxdb-[Vv]ersion: *//p')
    printf 'influxdb\t%s\t%s' "${version:-?}" "$INFLUX_TE_URL"
    return 0
  fi
  printf 'influxdb\t%s\t%s' "$INFLUX_TE_VERSION" "$INFLUX_TE_URL"
  return 1
}

influxdb_env() {
  echo "export JULIARUN_INFLUX_URL=$INFLUX_TE_URL"
  echo "export JULIARUN_INFLUX_TOKEN=:"
  echo "export JULIARUN_INFLUX_ORG=-"
  echo "export JULIARUN_INFLUX_BUCKET=$INFLUX_TE_DB/autogen"
}
