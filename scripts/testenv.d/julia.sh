# Julia on the host, from Debian bullseye's julia package (bookworm has none), pinned so that
# nothing else is taken from bullseye.
#
# Debian's julia 1.5.3 was built against bullseye's libunwind 1.3; with bookworm's 1.6 every
# exception thrown from compiled code crashes the process (SIGSEGV), caught or not. So the
# host's `julia` is a small wrapper (/usr/local/bin/julia) that runs /usr/bin/julia with a
# private copy of bullseye's libunwind8 first on the library path; the system's libunwind stays
# as it is for everything else. The Julia image installs bullseye's libunwind8 itself.
JULIA_UNWIND_VERSION=1.3.2-2
JULIA_PRIVATE_LIB=/usr/local/lib/juliarun-julia
JULIA_WRAPPER=/usr/local/bin/julia

_julia_bullseye_source() {
  [ -f /etc/apt/sources.list.d/juliarun-bullseye.list ] && return 0
  local mirror
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '/^deb .*debian/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$mirror" ] || te_die "cannot find the Debian mirror in the apt sources"
  echo "deb $mirror bullseye main" > /etc/apt/sources.list.d/juliarun-bullseye.list
  printf 'Package: *\nPin: release n=bullseye\nPin-Priority: 100\n' > /etc/apt/preferences.d/juliarun-bullseye
  _TE_APT_UPDATED=""
}

# Bullseye's libunwind8 unpacked (not installed) under $JULIA_PRIVATE_LIB.
_julia_private_unwind() {
  [ -e "$JULIA_PRIVATE_LIB/libunwind.so.8" ] && return 0
  local tmp deb
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download "libunwind8=$JULIA_UNWIND_VERSION" >/dev/null 2>&1) || {
    apt-get update -qq >/dev/null 2>&1 || true
    (cd "$tmp" && apt-get download "libunwind8=$JULIA_UNWIND_VERSION" >/dev/null 2>&1) \
      || { rm -rf "$tmp"; te_die "apt-get download libunwind8=$JULIA_UNWIND_VERSION failed"; }
  }
  deb=$(ls "$tmp"/libunwind8_*.deb)
  dpkg-deb -x "$deb" "$tmp/root" || { rm -rf "$tmp"; te_die "unpacking $deb failed"; }
  mkdir -p "$JULIA_PRIVATE_LIB"
  cp -a "$tmp"/root/usr/lib/x86_64-linux-gnu/libunwind*.so.* "$JULIA_PRIVATE_LIB/"
  rm -rf "$tmp"
}

_julia_wrapper() {
  cat > "$JULIA_WRAPPER.tmp" <<EOF
#!/bin/sh
# juliarun (scripts/testenv.d/julia.sh): Debian's julia 1.5.3 with bullseye's libunwind 1.3,
# which it was built against (bookworm's 1.6 crashes it on every thrown exception).
LD_LIBRARY_PATH=$JULIA_PRIVATE_LIB\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH} exec /usr/bin/julia "\$@"
EOF
  chmod 755 "$JULIA_WRAPPER.tmp"
  mv "$JULIA_WRAPPER.tmp" "$JULIA_WRAPPER"
}

# Julia runs and survives a caught exception thrown from compiled code.
_julia_works() {
  [ "$("$JULIA_WRAPPER" --startup-file=no -e 'f() = throw(ErrorException("x")); try f() catch; end; print("ok")' 2>/dev/null)" = ok ]
}

julia_up() {
  if [ -x "$JULIA_WRAPPER" ] && _julia_works; then return 0; fi
  _julia_bullseye_source
  [ -x /usr/bin/julia ] || te_apt julia
  _julia_private_unwind
  _julia_wrapper
  _julia_works || te_die "julia installed but a caught exception still crashes it (see $JULIA_WRAPPER)"
}
julia_down() { :; }
julia_status() {
  [ -x "$JULIA_WRAPPER" ] || { printf 'julia\t-\t-'; return 1; }
  printf 'julia\t%s\t%s' "$("$JULIA_WRAPPER" --version | awk '{print $3}')" "$JULIA_WRAPPER"
  _julia_works
}
julia_env() { :; }
