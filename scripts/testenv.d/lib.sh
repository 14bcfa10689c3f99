# Shared helpers for scripts/testenv components. Sourced, never executed.
# Every component NAME lives in scripts/testenv.d/NAME.sh and defines:
#   NAME_up      install/build (cached) and start; idempotent, fast when already up
#   NAME_down    stop what NAME_up started, by the PID it recorded
#   NAME_status  print "NAME<TAB>version<TAB>endpoint" and return 0 when up, non-zero when not
#   NAME_env     print `export VAR=value` lines for the component's endpoints

TE_HOME=${JULIARUN_TESTENV_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/juliarun}
TE_BIN=$TE_HOME/bin        # built binaries (kept across runs)
TE_SRC=$TE_HOME/build      # wrapper modules, downloads (kept across runs)
TE_RUN=$TE_HOME/run        # pids, logs, data of running services
mkdir -p "$TE_BIN" "$TE_SRC" "$TE_RUN"

te_log() { printf '[testenv %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
te_die() { printf '[testenv] error: %s\n' "$*" >&2; exit 1; }

# te_apt PKG... : install the Debian packages that are missing (apt-get update at most once per run).
te_apt() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ -z "${_TE_APT_UPDATED:-}" ]; then
    te_log "apt-get update"
    apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null 2>&1 || te_log "apt-get update reported errors (continuing)"
    _TE_APT_UPDATED=1
  fi
  te_log "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || te_die "apt-get install ${missing[*]} failed"
}

te_pidfile() { echo "$TE_RUN/$1.pid"; }

# te_starttime PID : the process's start time in clock ticks since boot (field 22 of
# /proc/PID/stat, read after the command name, which may contain spaces); empty when gone.
te_starttime() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  stat=${stat##*) }
  set -- $stat
  echo "${20}"
}

# te_running NAME : true when the process recorded for NAME is alive — the same process, not
# another that got its PID after a restart or a PID wrap (the start time must match too).
te_running() {
  local f pid want
  f=$(te_pidfile "$1")
  [ -s "$f" ] || return 1
  pid=$(cat "$f")
  kill -0 "$pid" 2>/dev/null || return 1
  want=$(cat "$TE_RUN/$1.start" 2>/dev/null || true)
  [ -n "$want" ] && [ "$want" = "$(te_starttime "$pid")" ]
}

# te_start NAME LOGFILE CMD... : start CMD in its own session, record its PID.
te_start() {
  local name=$1 logf=$2; shift 2
  if te_running "$name"; then return 0; fi
  mkdir -p "$(dirname "$logf")"
  setsid "$@" >>"$logf" 2>&1 < /dev/null &
  echo $! > "$(te_pidfile "$name")"
  te_starttime $! > "$TE_RUN/$name.start"
  te_log "started $name (pid $!, log $logf)"
}

# te_stop NAME [SECONDS] : TERM the recorded process group, KILL after SECONDS (default 20).
te_stop() {
  local name=$1 wait=${2:-20} f pid i
  f=$(te_pidfile "$name")
  [ -s "$f" ] || return 0
  pid=$(cat "$f")
  if ! te_running "$name"; then  # gone, or its PID now belongs to another process
    rm -f "$f" "$TE_RUN/$name.start"
    return 0
  fi
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < wait * 10; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
    fi
    te_log "stopped $name (pid $pid)"
  fi
  rm -f "$f" "$TE_RUN/$name.start"
}

# te_wait_port HOST PORT [SECONDS]
te_wait_port() {
  local host=$1 port=$2 wait=${3:-60} i
  for ((i = 0; i < wait * 5; i++)); do
    (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null && return 0
    sleep 0.2
  done
  return 1
}

# te_wait_http URL [SECONDS] : wait for a 2xx/3xx answer.
te_wait_http() {
  local url=$1 wait=${2:-60} i
  for ((i = 0; i < wait * 2; i++)); do
    curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null && return 0
    sleep 0.5
  done
  return 1
}

# te_port_free PORT : true when nothing listens on 127.0.0.1:PORT.
te_port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# te_go_locked CMD... : run a Go build holding the machine-wide Go build lock, so that only one
# Go build runs at a time (2 cores; Kubernetes builds peak at several GB), with bounded parallelism.
te_go_locked() {
  GOMAXPROCS=${GOMAXPROCS:-2} GOFLAGS="${GOFLAGS:-} -p=2" flock "$TE_HOME/go-build.lock" "$@"
}
