# provisioner: a host-path volume provisioner for the kubernetes component's real node.
# scripts/testenv.d/provisioner.py (run from the project's .venv) creates StorageClass
# juliarun-hostpath and binds each of its claims to a hostPath PV under $TE_RUN/pv/<ns>-<claim>,
# deleting PV and directory when the claim goes.

_prov_here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=kubernetes.sh
declare -F kubernetes_up >/dev/null || . "$_prov_here/kubernetes.sh"

PROV_RUN=$TE_RUN/provisioner
PROV_ROOT=$TE_RUN/pv
PROV_CLASS=juliarun-hostpath
PROV_PY=$(cd "$_prov_here/../.." && pwd)/.venv/bin/python

_prov_alive() {
  te_running provisioner && [ -f "$PROV_ROOT/.heartbeat" ] \
    && [ $(( $(date +%s) - $(cut -d. -f1 "$PROV_ROOT/.heartbeat") )) -lt 30 ]
}

provisioner_up() {
  kubernetes_status >/dev/null 2>&1 || kubernetes_up
  [ -x "$PROV_PY" ] || te_die "provisioner: no $PROV_PY (create the project's .venv first)"
  te_running provisioner && return 0
  rm -f "$PROV_ROOT/.heartbeat"
  te_start provisioner "$PROV_RUN/provisioner.log" "$PROV_PY" "$_prov_here/provisioner.py" \
    --kubeconfig "$K8S_KUBECONFIG" --root "$PROV_ROOT" --node "$K8S_NODE_NAME"
  local i
  for ((i = 0; i < 120; i++)); do [ -f "$PROV_ROOT/.heartbeat" ] && return 0; sleep 0.5; done
  te_die "the provisioner did not start (see $PROV_RUN/provisioner.log)"
}

provisioner_down() { te_stop provisioner; }

provisioner_status() {
  printf 'provisioner\t%s\tStorageClass %s -> %s' "hostpath" "$PROV_CLASS" "$PROV_ROOT"
  _prov_alive
}

provisioner_env() {
  echo "export JULIARUN_KUBE_STORAGE_CLASS=$PROV_CLASS"
}
