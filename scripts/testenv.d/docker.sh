# Docker engine: Debian's docker.io (20.10) dockerd, started in the background (no systemd).
# dockerd runs its own managed containerd (under /var/run/docker/containerd); the system socket
# /run/containerd/containerd.sock is left to the Kubernetes node's containerd. If a dockerd that
# this script did not start already answers on /var/run/docker.sock, it is used as it is.

DOCKER_SOCK=/var/run/docker.sock
DOCKER_DIR=$TE_RUN/docker

_docker_ping() {
  [ -S "$DOCKER_SOCK" ] && curl -fsS --max-time 3 --unix-socket "$DOCKER_SOCK" -o /dev/null \
    http://docker/_ping 2>/dev/null
}

docker_up() {
  if _docker_ping; then
    te_running docker || te_log "docker: using the dockerd already answering on $DOCKER_SOCK"
    return 0
  fi
  te_apt docker.io
  # Without a policy-rc.d that forbids it, the package's postinst starts its own dockerd.
  if _docker_ping; then
    te_log "docker: using the dockerd the docker.io package started"
    return 0
  fi
  # dockerd would adopt a containerd listening on the system socket; ours must stay separate.
  if [ -S /run/containerd/containerd.sock ]; then
    te_die "docker: /run/containerd/containerd.sock exists (a system containerd?); dockerd would" \
      "use it instead of its own managed containerd. Move that containerd to its own socket."
  fi
  mkdir -p "$DOCKER_DIR"
  # Own daemon config, so an /etc/docker/daemon.json written by anything else does not apply.
  cat > "$DOCKER_DIR/daemon.json" <<'EOF'
{
  "storage-driver": "overlay2",
  "log-driver": "json-file",
  "log-opts": {"max-size": "10m", "max-file": "2"},
  "features": {"buildkit": false}
}
EOF
  # With ip_forward already on, dockerd leaves the iptables FORWARD policy alone (it sets DROP
  # only when it has to switch forwarding on itself), which the Kubernetes node needs.
  [ "$(cat /proc/sys/net/ipv4/ip_forward)" = 1 ] || sysctl -qw net.ipv4.ip_forward=1
  te_start docker "$DOCKER_DIR/dockerd.log" \
    dockerd --config-file "$DOCKER_DIR/daemon.json" --host "unix://$DOCKER_SOCK" \
    --pidfile "$DOCKER_DIR/dockerd.pid"
  local i
  for ((i = 0; i < 120; i++)); do
    _docker_ping && break
    te_running docker || te_die "docker: dockerd exited; see $DOCKER_DIR/dockerd.log"
    sleep 0.5
  done
  _docker_ping || te_die "docker: dockerd did not answer within 60 s; see $DOCKER_DIR/dockerd.log"
  local driver
  driver=$(docker info -f '{{.Driver}}' 2>/dev/null || true)
  [ "$driver" = overlay2 ] || te_log "docker: warning: storage driver is '$driver', not overlay2"
}

docker_down() {
  te_running docker || { rm -f "$(te_pidfile docker)"; return 0; }
  # dockerd stops its containers and its managed containerd on TERM; give it time.
  te_stop docker 60
}

docker_status() {
  local v
  v=$(curl -fsS --max-time 3 --unix-socket "$DOCKER_SOCK" http://docker/version 2>/dev/null \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["Version"])' 2>/dev/null) || true
  if [ -z "$v" ]; then printf 'docker\t-\tunix://%s' "$DOCKER_SOCK"; return 1; fi
  printf 'docker\t%s\tunix://%s' "$v" "$DOCKER_SOCK"
}

docker_env() {
  echo "export DOCKER_HOST=unix://$DOCKER_SOCK"
}
