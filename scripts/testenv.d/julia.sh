# Julia on the host, from Debian bullseye's julia package (bookworm has none), pinned so that
# nothing else is taken from bullseye.
julia_up() {
  if command -v julia >/dev/null 2>&1; then return 0; fi
  local mirror
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '/^deb .*debian/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$mirror" ] || te_die "cannot find the Debian mirror in the apt sources"
  echo "deb $mirror bullseye main" > /etc/apt/sources.list.d/juliarun-bullseye.list
  printf 'Package: *\nPin: release n=bullseye\nPin-Priority: 100\n' > /etc/apt/preferences.d/juliarun-bullseye
  _TE_APT_UPDATED=""
  te_apt julia
  julia --version >/dev/null || te_die "julia installed but does not run"
}
julia_down() { :; }
julia_status() {
  command -v julia >/dev/null 2>&1 || { printf 'julia\t-\t-'; return 1; }
  printf 'julia\t%s\t%s' "$(julia --version | awk '{print $3}')" "$(command -v julia)"
}
julia_env() { :; }
