# RabbitMQ: Debian's rabbitmq-server (3.10), our own node "juliarun@localhost" with everything
# (config, mnesia, logs, cookie, pid files) under $TE_RUN/rabbitmq, AMQP on 127.0.0.1:5672, the
# management HTTP API (queue depths, unacked counts, rates) on 127.0.0.1:15672 and STOMP (what
# JuliaRun.jl speaks) on 127.0.0.1:61613; Erlang distribution and epmd on loopback only. The package's own service is never used: if its
# postinst started one, it is stopped through the package's init script.
RMQ_TE_PORT=5672
RMQ_TE_MGMT_PORT=15672
RMQ_TE_STOMP_PORT=61613
RMQ_TE_DIST_PORT=25672
RMQ_TE_EPMD_PORT=4369
RMQ_TE_NODE=juliarun@localhost
RMQ_TE_SBIN=/usr/lib/rabbitmq/bin

_rmq_run() { echo "$TE_RUN/rabbitmq"; }

# The environment every rabbitmq script of ours runs with (server and CLI must agree on the node,
# the cookie in $HOME and the files).
_rmq_env() {
  local run
  run=$(_rmq_run)
  echo "HOME=$run"
  echo "RABBITMQ_NODENAME=$RMQ_TE_NODE"
  echo "RABBITMQ_USE_LONGNAME=false"
  echo "RABBITMQ_CONF_ENV_FILE=$run/rabbitmq-env.conf"
  echo "RABBITMQ_CONFIG_FILE=$run/rabbitmq.conf"
  echo "RABBITMQ_ADVANCED_CONFIG_FILE=$run/advanced.config"
  echo "RABBITMQ_ENABLED_PLUGINS_FILE=$run/enabled_plugins"
  echo "RABBITMQ_MNESIA_BASE=$run/mnesia"
  echo "RABBITMQ_LOG_BASE=$run/log"
  echo "RABBITMQ_PID_FILE=$run/beam.pid"
  echo "RABBITMQ_DIST_PORT=$RMQ_TE_DIST_PORT"
  echo "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}"
  echo "ERL_EPMD_ADDRESS=127.0.0.1"
  echo "ERL_EPMD_PORT=$RMQ_TE_EPMD_PORT"
}

# _rmq_cmd CMD... : print nothing, set _RMQ_CMD to `env -i ... CMD...` with that environment.
_rmq_cmd() {
  local vars=()
  mapfile -t vars < <(_rmq_env)
  _RMQ_CMD=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 LC_ALL=C.UTF-8 "${vars[@]}" "$@")
}
_rmq_exec() { _rmq_cmd "$@"; "${_RMQ_CMD[@]}"; }

# After installing the package: the postinst may have started the packaged node (only where no
# policy-rc.d forbids it). Stop it with the package's own init script, which uses its pid file.
_rmq_stop_packaged() {
  local pidf=/run/rabbitmq/pid
  [ -s "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null || return 0
  te_log "stopping the rabbitmq-server the package started (pid $(cat "$pidf"))"
  /etc/init.d/rabbitmq-server stop >&2 || te_log "warning: /etc/init.d/rabbitmq-server stop failed"
  # Its epmd (started with -daemon by that node): stop it only when no node is registered any more.
  if ! te_port_free "$RMQ_TE_EPMD_PORT" && [ -z "$(epmd -names 2>/dev/null | sed -n 's/^name //p')" ]; then
    epmd -kill >/dev/null 2>&1 || true
  fi
}

_rmq_configure() {
  local run
  run=$(_rmq_run)
  mkdir -p "$run/mnesia" "$run/log"
  : > "$run/rabbitmq-env.conf"
  echo '[rabbitmq_management,rabbitmq_stomp].' > "$run/enabled_plugins"
  cat > "$run/rabbitmq.conf" <<EOF
# Written by scripts/testenv (rabbitmq.sh); rewritten on every up.
listeners.tcp.default = 127.0.0.1:$RMQ_TE_PORT
management.tcp.ip = 127.0.0.1
management.tcp.port = $RMQ_TE_MGMT_PORT
# Rates (publish/deliver per second) sampled every 5 s.
management.rates_mode = basic
collect_statistics_interval = 5000
stomp.listeners.tcp.1 = 127.0.0.1:$RMQ_TE_STOMP_PORT
# guest/guest, usable from localhost only (the default, stated).
loopback_users.guest = true
vm_memory_high_watermark.absolute = 1GB
disk_free_limit.absolute = 50MB
log.file.level = info
log.console = false
EOF
}

_rmq_answers() {
  te_running rabbitmq && ! te_port_free "$RMQ_TE_PORT" && ! te_port_free "$RMQ_TE_MGMT_PORT" \
    && ! te_port_free "$RMQ_TE_STOMP_PORT"
}

# The broker's version, from the server properties of an AMQP 0-9-1 Connection.Start.
_rmq_server_version() {
  (
    exec 3<>"/dev/tcp/127.0.0.1/$RMQ_TE_PORT" || exit 1
    printf 'AMQP\0\0\11\1' >&3
    # Frame header: type (1 byte), channel (2), payload size (4, big endian); then payload, end byte.
    local h size
    h=$(timeout 3 dd bs=7 count=1 iflag=fullblock <&3 2>/dev/null | od -An -tu1) || exit 1
    # shellcheck disable=SC2086 # split the seven byte values on purpose
    set -- $h
    [ $# -eq 7 ] && [ "$1" = 1 ] || exit 1
    size=$(($4 * 16777216 + $5 * 65536 + $6 * 256 + $7))
    timeout 3 dd bs=$((size + 1)) count=1 iflag=fullblock <&3 2>/dev/null \
      | tr -c '[:print:]' '\n' | grep -v '^$' | grep -A1 '^versionS$' | tail -n 1
  ) 2>/dev/null
}

rabbitmq_up() {
  if _rmq_answers; then return 0; fi
  local fresh=""
  dpkg-query -W -f='${Status}' rabbitmq-server 2>/dev/null | grep -q 'install ok installed' || fresh=1
  te_apt rabbitmq-server
  # Right after installing, or when something holds our port: the packaged service may be running.
  if [ -n "$fresh" ] || { ! te_running rabbitmq && ! te_port_free "$RMQ_TE_PORT"; }; then
    _rmq_stop_packaged
  fi
  if ! te_running rabbitmq; then
    local port
    for port in "$RMQ_TE_PORT" "$RMQ_TE_MGMT_PORT" "$RMQ_TE_STOMP_PORT"; do
      te_port_free "$port" || te_die "127.0.0.1:$port is taken by a process testenv did not start"
    done
  fi
  local run i
  run=$(_rmq_run)
  _rmq_configure
  # epmd: our own (recorded) one on loopback, unless some epmd already serves the port.
  if ! te_running rabbitmq-epmd && te_port_free "$RMQ_TE_EPMD_PORT"; then
    te_start rabbitmq-epmd "$run/log/epmd.log" epmd -address 127.0.0.1 -port "$RMQ_TE_EPMD_PORT"
    te_wait_port 127.0.0.1 "$RMQ_TE_EPMD_PORT" 15 || te_die "epmd did not start (log: $run/log/epmd.log)"
  fi
  if ! te_running rabbitmq; then
    _rmq_cmd "$RMQ_TE_SBIN/rabbitmq-server"
    (cd "$run" && te_start rabbitmq "$run/log/stdout.log" "${_RMQ_CMD[@]}")
  fi
  for ((i = 0; i < 240; i++)); do
    te_port_free "$RMQ_TE_PORT" || break
    te_running rabbitmq || { tail -n 20 "$run/log/stdout.log" >&2; te_die "rabbitmq exited while starting"; }
    sleep 0.5
  done
  te_port_free "$RMQ_TE_PORT" && te_die "rabbitmq did not listen on 127.0.0.1:$RMQ_TE_PORT (log: $run/log/)"
  # The listener opens at the end of the boot; make sure the node says it is fully up.
  _rmq_exec timeout 60 "$RMQ_TE_SBIN/rabbitmqctl" -q await_startup --timeout 50 >&2 \
    || te_die "rabbitmq did not finish booting (log: $run/log/)"
  te_wait_port 127.0.0.1 "$RMQ_TE_MGMT_PORT" 30 || te_die "rabbitmq management API did not listen"
  te_wait_port 127.0.0.1 "$RMQ_TE_STOMP_PORT" 30 || te_die "rabbitmq STOMP did not listen"
}

rabbitmq_down() {
  if te_running rabbitmq; then
    _rmq_exec timeout 60 "$RMQ_TE_SBIN/rabbitmqctl" -q stop >/dev/null 2>&1 || true
    te_stop rabbitmq 30
  else
    rm -f "$(te_pidfile rabbitmq)"
  fi
  te_stop rabbitmq-epmd 10
  local i
  for ((i = 0; i < 50; i++)); do
    te_port_free "$RMQ_TE_PORT" && te_port_free "$RMQ_TE_DIST_PORT" \
      && te_port_free "$RMQ_TE_MGMT_PORT" && te_port_free "$RMQ_TE_STOMP_PORT" && return 0
    sleep 0.2
  done
  te_log "warning: something still listens on 127.0.0.1:$RMQ_TE_PORT or :$RMQ_TE_DIST_PORT"
}

rabbitmq_status() {
  local version
  if _rmq_answers; then
    version=$(_rmq_server_version)
    printf 'rabbitmq\t%s\t%s' "${version:-?}" "amqp://127.0.0.1:$RMQ_TE_PORT"
    return 0
  fi
  printf 'rabbitmq\t%s\t%s' "$(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null || echo -)" \
    "amqp://127.0.0.1:$RMQ_TE_PORT"
  return 1
}

rabbitmq_env() {
  echo "export JULIARUN_AMQP_URL=amqp://guest:guest@127.0.0.1:$RMQ_TE_PORT/%2F"
  echo "export JULIARUN_RABBITMQ_MGMT_URL=http://127.0.0.1:$RMQ_TE_MGMT_PORT"
  echo "export JULIARUN_RABBITMQ_STOMP_PORT=$RMQ_TE_STOMP_PORT"
}
