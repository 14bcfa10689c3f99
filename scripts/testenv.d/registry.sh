# Container registry: Debian's docker-registry (distribution 2.8) with our own config: plain HTTP
# on 127.0.0.1:5000, no auth, storage under $TE_RUN/registry (kept across down/up).
# The package's own service (init script, htpasswd auth, also on :5000) is stopped and disabled.

REGISTRY_ADDR=127.0.0.1:5000
REGISTRY_NAME=localhost:5000   # what images are tagged with; Docker treats 127.0.0.0/8 as insecure
REGISTRY_DIR=$TE_RUN/registry

_registry_probe() { curl -fsS --max-time 3 -o /dev/null "http://$REGISTRY_ADDR/v2/" 2>/dev/null; }

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

registry_up() {
  te_apt docker-registry
  _registry_stop_packaged
  if te_running registry; then
    te_wait_http "http://$REGISTRY_ADDR/v2/" 30 && return 0
    te_die "registry: pid $(cat "$(te_pidfile registry)") runs but /v2/ does not answer"
  fi
  if ! te_port_free 5000; then
    te_die "registry: something else listens on :5000 (not started by testenv); stop it first"
  fi
  mkdir -p "$REGISTRY_DIR/data"
  cat > "$REGISTRY_DIR/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
  fields:
    service: registry
storage:
  filesystem:
    rootdirectory: $REGISTRY_DIR/data
  cache:
    blobdescriptor: inmemory
  delete:
    enabled: true
http:
  addr: $REGISTRY_ADDR
  headers:
    X-Content-Type-Options: [nosniff]
EOF
  te_start registry "$REGISTRY_DIR/registry.log" docker-registry serve "$REGISTRY_DIR/config.yml"
  te_wait_http "http://$REGISTRY_ADDR/v2/" 30 \
    || te_die "registry: /v2/ did not answer; see $REGISTRY_DIR/registry.log"
}

registry_down() {
  te_stop registry 20
}

registry_status() {
  local v
  # "docker-registry github.com/docker/distribution 2.8.2+ds1"
  v=$(docker-registry --version 2>/dev/null | awk '{print $3}') || true
  if ! _registry_probe; then printf 'registry\t%s\thttp://%s' "${v:--}" "$REGISTRY_ADDR"; return 1; fi
  printf 'registry\t%s\thttp://%s' "$v" "$REGISTRY_ADDR"
}

registry_env() {
  echo "export JULIARUN_REGISTRY=$REGISTRY_NAME"
}
