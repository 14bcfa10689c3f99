# Prefect server from the project's virtual environment (scripts/bootstrap makes it), SQLite
# database under $TE_RUN/prefect, on 127.0.0.1:4200.
PREFECT_PORT=${JULIARUN_PREFECT_PORT:-4200}
_prefect_py() { echo "$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/.venv/bin/python"; }
prefect_up() {
  local py; py=$(_prefect_py)
  [ -x "$py" ] || te_die "no project virtualenv at ${py%/bin/python}: run scripts/bootstrap first"
  if te_wait_http "http://127.0.0.1:$PREFECT_PORT/api/health" 1; then return 0; fi
  te_port_free "$PREFECT_PORT" || te_die "port $PREFECT_PORT is taken by something that is not a Prefect server"
  mkdir -p "$TE_RUN/prefect"
  te_start prefect "$TE_RUN/prefect/server.log" env PREFECT_HOME="$TE_RUN/prefect" \
    PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_API_URL= \
    "$py" -m prefect server start --host 127.0.0.1 --port "$PREFECT_PORT"
  te_wait_http "http://127.0.0.1:$PREFECT_PORT/api/health" 120 \
    || te_die "Prefect server did not become healthy; see $TE_RUN/prefect/server.log"
}
prefect_down() { te_stop prefect 30; }
prefect_status() {
  local v
  v=$(curl -fsS --max-time 3 "http://127.0.0.1:$PREFECT_PORT/api/admin/version" 2>/dev/null | tr -d '"') \
    || { printf 'prefect\t-\thttp://127.0.0.1:%s/api' "$PREFECT_PORT"; return 1; }
  printf 'prefect\t%s\thttp://127.0.0.1:%s/api' "$v" "$PREFECT_PORT"
}
prefect_env() { echo "export PREFECT_API_URL=http://127.0.0.1:$PREFECT_PORT/api"; }
