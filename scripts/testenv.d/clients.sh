# Client programs from Debian that tests and benches drive as a person's machine would: rclone
# (a WebDAV client: named storage through the router), and nginx and wrk (bench/router.py's
# plain reverse proxy and load generator). Nothing runs in the background; `down` has nothing
# to stop.
CLIENTS_PKGS=(rclone nginx-light wrk)
CLIENTS_BINS=(/usr/bin/rclone /usr/sbin/nginx /usr/bin/wrk)

_clients_missing() {
  local b
  for b in "${CLIENTS_BINS[@]}"; do [ -x "$b" ] || return 0; done
  return 1
}

clients_up() {
  if _clients_missing; then
    te_apt "${CLIENTS_PKGS[@]}"
    # nginx-light starts a system nginx on port 80 when installed: the bench runs its own.
    if command -v systemctl >/dev/null 2>&1; then systemctl disable --now nginx >/dev/null 2>&1 || true; fi
    pkill -x nginx 2>/dev/null || true
  fi
  _clients_missing && te_die "client programs missing after apt-get install: ${CLIENTS_PKGS[*]}"
  return 0
}
clients_down() { :; }
clients_status() {
  if _clients_missing; then
    printf 'clients\t-\t%s' "${CLIENTS_BINS[*]}"
    return 1
  fi
  printf 'clients\trclone %s\t%s' "$(rclone version 2>/dev/null | awk 'NR==1{print $2}')" "${CLIENTS_BINS[*]}"
}
clients_env() {
  echo "export JULIARUN_RCLONE=/usr/bin/rclone"
}
