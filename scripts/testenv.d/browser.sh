# Headless Chromium for the browser tests of the Prefect UI: Debian's chromium and
# chromium-driver (the two must be the same version; Debian ships them from one source). Nothing
# runs in the background: each test starts its own chromedriver, which starts its own Chromium.
# `up` checks that the pair really starts a headless page; `down` has nothing to stop.
BROWSER_CHROMIUM=/usr/bin/chromium
BROWSER_CHROMEDRIVER=/usr/bin/chromedriver
# The flags the tests start Chromium with (root in a VM: no sandbox; no GPU; nothing fetched).
BROWSER_FLAGS="--headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking --disable-component-update --disable-sync"

_browser_version() { "$BROWSER_CHROMIUM" --version 2>/dev/null | awk '{print $2}'; }
_browser_driver_version() { "$BROWSER_CHROMEDRIVER" --version 2>/dev/null | awk '{print $2}'; }

# Render a tiny page headless and check the DOM came back: the browser starts and runs a page.
_browser_smoke() {
  local out
  # shellcheck disable=SC2086 # the flags are split on purpose
  out=$(timeout 60 "$BROWSER_CHROMIUM" $BROWSER_FLAGS --user-data-dir="$TE_RUN/browser/profile" \
    --dump-dom 'data:text/html,<title>juliarun</title><p id=ok>ok</p>' 2>>"$TE_RUN/browser/smoke.log") || return 1
  grep -q '<p id="ok">ok</p>' <<<"$out"
}

browser_up() {
  mkdir -p "$TE_RUN/browser"
  if [ -x "$BROWSER_CHROMIUM" ] && [ -x "$BROWSER_CHROMEDRIVER" ] && [ -f "$TE_RUN/browser/ok-$(_browser_version)" ]; then
    return 0
  fi
  te_apt chromium chromium-driver
  local v d
  v=$(_browser_version); d=$(_browser_driver_version)
  [ -n "$v" ] || te_die "$BROWSER_CHROMIUM does not run (chromium --version failed)"
  [ "$v" = "$d" ] || te_die "chromium $v and chromedriver $d differ: apt-get install chromium chromium-driver again"
  _browser_smoke || te_die "headless chromium did not render a page (log: $TE_RUN/browser/smoke.log)"
  rm -f "$TE_RUN/browser"/ok-*
  touch "$TE_RUN/browser/ok-$v"
}
browser_down() { :; }
browser_status() {
  local v
  v=$(_browser_version)
  if [ -n "$v" ] && [ "$v" = "$(_browser_driver_version)" ]; then
    printf 'browser\tchromium %s\t%s' "$v" "$BROWSER_CHROMEDRIVER"
    return 0
  fi
  printf 'browser\t%s\t%s' "${v:--}" "$BROWSER_CHROMEDRIVER"
  return 1
}
browser_env() {
  echo "export JULIARUN_CHROMIUM=$BROWSER_CHROMIUM"
  echo "export JULIARUN_CHROMEDRIVER=$BROWSER_CHROMEDRIVER"
}
