# kwok: simulated nodes for scheduling/scale tests on the kubernetes component's apiserver.
# It manages only nodes annotated kwok.x-k8s.io/node=fake and creates none itself: tests create the
# fake nodes (tests/integration/fixtures/kubernetes.py: kwok_nodes). Stages: upstream's "fast" set —
# fake nodes become Ready (with leases), pods bound to them become Running, Job-owned pods complete
# (at once, or after the duration in their first container's KWOK_RUN_FOR variable, e.g.
# "60s": simulated work for the autoscaler tests), deleted pods go away at once.

_kwok_here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=kubernetes.sh
declare -F kubernetes_up >/dev/null || . "$_kwok_here/kubernetes.sh"

KWOK_RUN=$TE_RUN/kwok
KWOK_ADDR=127.0.0.1:10247
KWOK_NODE_ANNOTATION=kwok.x-k8s.io/node=fake
KWOK_POD_CIDR=10.240.0.1/16

# Upstream's fast pod-complete stage, plus a delay read from the pod's first container's
# KWOK_RUN_FOR variable (none: complete at once, as upstream's).
_kwok_run_for='.spec.containers[0].env // [] | map(select(.name == "KWOK_RUN_FOR")) | .[0].value // ""'

_kwok_config() {  # writes the stages to $1
  local f first=1
  {
    for f in node-initialize node-heartbeat-with-lease pod-ready pod-complete pod-delete; do
      [ $first = 1 ] || echo '---'
      first=0
      if [ "$f" = pod-complete ]; then
        awk -v expr="$_kwok_run_for" '
          /^  next:/ && !done { print "  delay:"; print "    durationFrom:"
                                print "      expressionFrom: '"'"'" expr "'"'"'"; done = 1 }
          { print }' "$(kwok_bin_dir)/stages/$f.yaml"
      else
        cat "$(kwok_bin_dir)/stages/$f.yaml"
      fi
    done
  } > "$1"
}

kwok_up() {
  build_kwok || te_die "building kwok $KWOK_VERSION failed"
  kubernetes_status >/dev/null 2>&1 || kubernetes_up
  mkdir -p "$KWOK_RUN"
  _kwok_config "$KWOK_RUN/kwok.yaml.new"
  if te_running kwok && curl -fsS -o /dev/null --max-time 2 "http://$KWOK_ADDR/healthz" 2>/dev/null; then
    if cmp -s "$KWOK_RUN/kwok.yaml.new" "$KWOK_RUN/kwok.yaml"; then
      rm -f "$KWOK_RUN/kwok.yaml.new"
      return 0
    fi
    te_log "kwok: stages changed, restarting"
    te_stop kwok
  fi
  te_running kwok || te_port_free "${KWOK_ADDR##*:}" || te_die "port ${KWOK_ADDR##*:} is taken by something else"
  mv "$KWOK_RUN/kwok.yaml.new" "$KWOK_RUN/kwok.yaml"
  _k8s_start kwok "$KWOK_RUN/kwok.log" "$(kwok_bin_dir)/kwok" \
    --config="$KWOK_RUN/kwok.yaml" --kubeconfig="$K8S_KUBECONFIG" \
    --manage-all-nodes=false --manage-nodes-with-annotation-selector="$KWOK_NODE_ANNOTATION" \
    --node-lease-duration-seconds=40 --cidr="$KWOK_POD_CIDR" --node-ip=10.240.255.254 \
    --server-address="$KWOK_ADDR"
  te_wait_http "http://$KWOK_ADDR/healthz" 60 || te_die "kwok did not come up (see $KWOK_RUN/kwok.log)"
}

kwok_down() { te_stop kwok; }

kwok_status() {
  printf 'kwok\t%s\thttp://%s (nodes with annotation %s)' "$KWOK_VERSION" "$KWOK_ADDR" "$KWOK_NODE_ANNOTATION"
  te_running kwok && curl -fsS -o /dev/null --max-time 2 "http://$KWOK_ADDR/healthz" 2>/dev/null
}

kwok_env() {
  echo "export JULIARUN_KWOK_URL=http://$KWOK_ADDR"
  echo "export JULIARUN_KWOK_NODE_ANNOTATION=$KWOK_NODE_ANNOTATION"
}
