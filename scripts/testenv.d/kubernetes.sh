# A real single-node Kubernetes cluster built from Go modules: etcd, kube-apiserver (127.0.0.1:6443),
# kube-controller-manager, kube-scheduler, and one real node (kubelet + a private containerd instance +
# runc + the Debian CNI plugins). Sourced by scripts/testenv.
#
# Layout:
#   $TE_BIN/kubernetes-<ver>/, $TE_BIN/etcd-<ver>/   binaries (kubernetes-build.sh)
#   $TE_HOME/kubernetes/                               PKI, kubeconfigs, configs (stable across runs)
#   $TE_RUN/kubernetes/                                etcd data, logs, kubelet and containerd roots
#   /run/juliarun/containerd/                          containerd state and socket (not Docker's)
# Safety: the kubelet runs with (almost) no eviction, no node-allocatable enforcement and image GC off, so
# it never touches host processes; host iptables are only appended to (FORWARD policy ACCEPT as Docker needs).

_k8s_here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=kubernetes-build.sh
. "$_k8s_here/kubernetes-build.sh"

K8S_HOME=$TE_HOME/kubernetes
K8S_RUN=$TE_RUN/kubernetes
K8S_PKI=$K8S_HOME/pki
K8S_KUBECONFIG=$K8S_HOME/admin.kubeconfig
K8S_API_PORT=6443
K8S_API_URL=https://127.0.0.1:$K8S_API_PORT
K8S_ETCD_PORT=12379
K8S_ETCD_PEER_PORT=12380
K8S_SERVICE_CIDR=10.96.0.0/16
K8S_SERVICE_IP=10.96.0.1
K8S_POD_CIDR=10.244.0.0/16
K8S_NODE_NAME=juliarun-node
K8S_NODE_LABELS=juliarun.io/node-kind=real
K8S_CTRD_DIR=/run/juliarun/containerd
K8S_CTRD_SOCK=$K8S_CTRD_DIR/containerd.sock
K8S_PAUSE_IMAGE=juliarun.local/pause:1.0
# Structured authentication configuration (OIDC issuers), written by the oidc component; used when present.
K8S_AUTHN_CONFIG=${JULIARUN_K8S_AUTHN_CONFIG:-$TE_HOME/oidc/authentication-config.yaml}
K8S_CNI_BRIDGE=jrcni0

_k8s_bin() { echo "$(k8s_bin_dir)/$1"; }
# _k8s_start NAME LOGFILE CMD... : te_start, keeping one previous log once a log passes 64 MiB.
_k8s_start() {
  local name=$1 logf=$2
  te_running "$name" && return 0
  if [ -f "$logf" ] && [ "$(stat -c %s "$logf")" -gt 67108864 ]; then mv -f "$logf" "$logf.1"; fi
  te_start "$@"
}
# _k8s_restart_on_change NAME ARGS... : start NAME as _k8s_start does, first stopping a running
# one that was started with other arguments (so a changed flag takes effect on the next `up`).
_k8s_restart_on_change() {
  local name=$1 hash
  hash=$(printf '%s\n' "$@" | sha256sum | cut -c1-16)
  if te_running "$name" && [ "$(cat "$K8S_RUN/$name.hash" 2>/dev/null)" != "$hash" ]; then
    te_log "kubernetes: the flags of $name changed, restarting it"
    te_stop "$name" 30
  fi
  _k8s_start "$@"
  echo "$hash" > "$K8S_RUN/$name.hash"
}
_k8s_kubectl() { "$(_k8s_bin kubectl)" --kubeconfig "$K8S_KUBECONFIG" "$@"; }
_k8s_ctr() { ctr -a "$K8S_CTRD_SOCK" -n k8s.io "$@"; }

# The address the node registers with (the host's default-route address); 127.0.0.1 without one.
_k8s_node_ip() {
  local ip
  # (a route lookup only: nothing is sent)
  ip=$(ip -4 route get 1.1.1.1 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "src") {print $(i + 1); exit}}')
  [ -n "$ip" ] || ip=$(ip -4 -o addr show scope global 2>/dev/null | awk '{split($4, a, "/"); print a[1]; exit}')
  echo "${ip:-127.0.0.1}"
}

# --- PKI --------------------------------------------------------------------------------------------

# _k8s_cert NAME SUBJECT EXTENSIONS : key + certificate signed by the test CA.
_k8s_cert() {
  local name=$1 subj=$2 ext=$3 ca=${4:-ca}
  openssl genrsa -out "$K8S_PKI/$name.key" 2048 2>/dev/null || return 1
  openssl req -new -key "$K8S_PKI/$name.key" -subj "$subj" -out "$K8S_PKI/$name.csr" 2>/dev/null || return 1
  printf '%b\n' "$ext" > "$K8S_PKI/$name.ext"
  openssl x509 -req -in "$K8S_PKI/$name.csr" -CA "$K8S_PKI/$ca.crt" -CAkey "$K8S_PKI/$ca.key" \
    -CAcreateserial -days 3650 -sha256 -extfile "$K8S_PKI/$name.ext" -out "$K8S_PKI/$name.crt" 2>/dev/null || return 1
  rm -f "$K8S_PKI/$name.csr"
}

_k8s_client_ext='basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth'
_k8s_server_ext='basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth'

# _k8s_kubeconfig FILE CERTNAME : a kubeconfig for the apiserver with the client cert CERTNAME embedded.
_k8s_kubeconfig() {
  local file=$1 cert=$2
  cat > "$file.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: juliarun
  cluster:
    server: $K8S_API_URL
    certificate-authority-data: $(base64 -w0 < "$K8S_PKI/ca.crt")
users:
- name: $cert
  user:
    client-certificate-data: $(base64 -w0 < "$K8S_PKI/$cert.crt")
    client-key-data: $(base64 -w0 < "$K8S_PKI/$cert.key")
contexts:
- name: juliarun
  context:
    cluster: juliarun
    user: $cert
current-context: juliarun
EOF
  chmod 600 "$file.tmp"
  mv "$file.tmp" "$file"
}

_k8s_pki() {
  local node_ip=$1
  mkdir -p "$K8S_PKI"; chmod 700 "$K8S_PKI"
  if [ ! -s "$K8S_PKI/ca.crt" ]; then
    te_log "kubernetes: generating the test PKI in $K8S_PKI"
    rm -f "$K8S_PKI"/*
    openssl genrsa -out "$K8S_PKI/ca.key" 2048 2>/dev/null || return 1
    openssl req -x509 -new -nodes -key "$K8S_PKI/ca.key" -subj "/CN=juliarun-test-ca" -days 3650 -sha256 \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
      -out "$K8S_PKI/ca.crt" 2>/dev/null || return 1
    openssl genrsa -out "$K8S_PKI/sa.key" 2048 2>/dev/null || return 1
    openssl rsa -in "$K8S_PKI/sa.key" -pubout -out "$K8S_PKI/sa.pub" 2>/dev/null || return 1
    _k8s_cert admin "/O=system:masters/CN=juliarun-admin" "$_k8s_client_ext" || return 1
    _k8s_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$_k8s_client_ext" || return 1
    _k8s_cert controller-manager "/CN=system:kube-controller-manager" "$_k8s_client_ext" || return 1
    _k8s_cert scheduler "/CN=system:kube-scheduler" "$_k8s_client_ext" || return 1
    _k8s_cert kubelet-client "/O=system:nodes/CN=system:node:$K8S_NODE_NAME" "$_k8s_client_ext" || return 1
  fi
  # The aggregation layer's front proxy (the apiserver presents this client certificate to
  # extension apiservers such as juliarun's external-metrics API): its own CA, as kubeadm does.
  if [ ! -s "$K8S_PKI/front-proxy-ca.crt" ] || [ ! -s "$K8S_PKI/front-proxy-client.crt" ]; then
    openssl genrsa -out "$K8S_PKI/front-proxy-ca.key" 2048 2>/dev/null || return 1
    openssl req -x509 -new -nodes -key "$K8S_PKI/front-proxy-ca.key" -subj "/CN=juliarun-front-proxy-ca" -days 3650 -sha256 \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
      -out "$K8S_PKI/front-proxy-ca.crt" 2>/dev/null || return 1
    _k8s_cert front-proxy-client "/CN=front-proxy-client" "$_k8s_client_ext" front-proxy-ca || return 1
  fi
  # Serving certificates carry the node address: re-issue them when it changes.
  if [ "$(cat "$K8S_PKI/node-ip" 2>/dev/null)" != "$node_ip" ] || [ ! -s "$K8S_PKI/apiserver.crt" ] || [ ! -s "$K8S_PKI/kubelet.crt" ]; then
    _k8s_cert apiserver "/CN=kube-apiserver" "$_k8s_server_ext\nsubjectAltName=DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:$K8S_SERVICE_IP,IP:$node_ip" || return 1
    _k8s_cert kubelet "/CN=$K8S_NODE_NAME" "$_k8s_server_ext\nsubjectAltName=DNS:$K8S_NODE_NAME,DNS:localhost,IP:127.0.0.1,IP:$node_ip" || return 1
    echo "$node_ip" > "$K8S_PKI/node-ip"
  fi
  [ -s "$K8S_KUBECONFIG" ] || _k8s_kubeconfig "$K8S_KUBECONFIG" admin
  [ -s "$K8S_HOME/controller-manager.kubeconfig" ] || _k8s_kubeconfig "$K8S_HOME/controller-manager.kubeconfig" controller-manager
  [ -s "$K8S_HOME/scheduler.kubeconfig" ] || _k8s_kubeconfig "$K8S_HOME/scheduler.kubeconfig" scheduler
  [ -s "$K8S_HOME/kubelet.kubeconfig" ] || _k8s_kubeconfig "$K8S_HOME/kubelet.kubeconfig" kubelet-client
}

# --- host preparation -------------------------------------------------------------------------------

_k8s_apt() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  # Wait for the dpkg lock instead of failing when another component installs at the same time.
  te_log "apt-get install ${missing[*]}"
  if ! DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
    apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
      || te_die "apt-get install ${missing[*]} failed"
  fi
}

_k8s_host_prep() {
  # containerd 1.6, runc and the CNI plugins (/usr/lib/cni); the package starts no daemon without systemd.
  _k8s_apt containerd runc containernetworking-plugins iproute2 openssl curl
  # (this kernel has br_netfilter built in and no modprobe)
  if command -v modprobe >/dev/null 2>&1; then modprobe br_netfilter 2>/dev/null || true; fi
  if [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]; then
    sysctl -qw net.bridge.bridge-nf-call-iptables=1 || true
  fi
  sysctl -qw net.ipv4.ip_forward=1
  # Docker sets FORWARD to DROP; pod traffic through the CNI bridge needs it to pass. Only the policy is
  # changed, no rule is flushed.
  iptables -P FORWARD ACCEPT
}

# --- etcd and the control plane ---------------------------------------------------------------------

_k8s_start_etcd() {
  te_running k8s-etcd && return 0
  te_port_free "$K8S_ETCD_PORT" || te_die "port $K8S_ETCD_PORT is taken by something else"
  mkdir -p "$K8S_RUN/etcd"; chmod 700 "$K8S_RUN/etcd"
  _k8s_start k8s-etcd "$K8S_RUN/logs/etcd.log" "$(etcd_bin_dir)/etcd" --name juliarun \
    --data-dir "$K8S_RUN/etcd" \
    --listen-client-urls "http://127.0.0.1:$K8S_ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$K8S_ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$K8S_ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$K8S_ETCD_PEER_PORT" \
    --initial-cluster "juliarun=http://127.0.0.1:$K8S_ETCD_PEER_PORT" --listen-metrics-urls "" \
    --quota-backend-bytes 2147483648 --auto-compaction-retention 1h --snapshot-count 10000 --log-level warn
  te_wait_http "http://127.0.0.1:$K8S_ETCD_PORT/health" 60 || te_die "etcd did not come up (see $K8S_RUN/logs/etcd.log)"
}

# The apiserver's flags; the oidc component's structured authentication configuration (two OIDC issuers)
# is passed when it exists.
_k8s_apiserver_args() {
  local node_ip=$1
  printf '%s\n' --bind-address=127.0.0.1 --secure-port="$K8S_API_PORT" --advertise-address="$node_ip" \
    --etcd-servers="http://127.0.0.1:$K8S_ETCD_PORT" \
    --service-cluster-ip-range="$K8S_SERVICE_CIDR" \
    --tls-cert-file="$K8S_PKI/apiserver.crt" --tls-private-key-file="$K8S_PKI/apiserver.key" \
    --client-ca-file="$K8S_PKI/ca.crt" \
    --kubelet-client-certificate="$K8S_PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$K8S_PKI/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority="$K8S_PKI/ca.crt" \
    --kubelet-preferred-address-types=InternalIP,Hostname \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$K8S_PKI/sa.pub" --service-account-signing-key-file="$K8S_PKI/sa.key" \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --requestheader-client-ca-file="$K8S_PKI/front-proxy-ca.crt" --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$K8S_PKI/front-proxy-client.crt" --proxy-client-key-file="$K8S_PKI/front-proxy-client.key" \
    --enable-aggregator-routing=true \
    --allow-privileged=true --profiling=false --v=1
  if [ -s "$K8S_AUTHN_CONFIG" ]; then printf '%s\n' --authentication-config="$K8S_AUTHN_CONFIG"; fi
}

# A hash of the apiserver's flags and of the files they name that only a restart picks up (the
# authentication configuration is also reloaded live, but its presence is a flag).
_k8s_apiserver_hash() {
  {
    printf '%s\n' "$@"
    if [ -s "$K8S_AUTHN_CONFIG" ]; then cat "$K8S_AUTHN_CONFIG"; fi
  } | sha256sum | cut -c1-16
}

_k8s_start_apiserver() {
  local node_ip=$1 args=() hash
  mapfile -t args < <(_k8s_apiserver_args "$node_ip")
  hash=$(_k8s_apiserver_hash "${args[@]}")
  if te_running k8s-apiserver; then
    [ "$(cat "$K8S_RUN/apiserver.hash" 2>/dev/null)" = "$hash" ] && return 0
    te_log "kubernetes: the apiserver's flags or authentication config changed, restarting it"
    te_stop k8s-apiserver 30
  fi
  te_port_free "$K8S_API_PORT" || te_die "port $K8S_API_PORT is taken by something else"
  _k8s_start k8s-apiserver "$K8S_RUN/logs/kube-apiserver.log" "$(_k8s_bin kube-apiserver)" "${args[@]}"
  echo "$hash" > "$K8S_RUN/apiserver.hash"
  local i
  for ((i = 0; i < 240; i++)); do
    curl -fsS -o /dev/null --max-time 2 --cacert "$K8S_PKI/ca.crt" "$K8S_API_URL/readyz" 2>/dev/null && return 0
    te_running k8s-apiserver || break
    sleep 0.5
  done
  te_die "kube-apiserver did not become ready (see $K8S_RUN/logs/kube-apiserver.log)"
}

_k8s_start_controllers() {
  # The client rate limits are raised from 20/s (burst 30): a Job's finished pods each need a
  # PATCH from the Job controller, and the suite's parallel phase finishes hundreds at once (the
  # Job controller then waited seconds per request, and other tests' Jobs waited for it).
  _k8s_restart_on_change k8s-controller-manager "$K8S_RUN/logs/kube-controller-manager.log" "$(_k8s_bin kube-controller-manager)" \
    --kube-api-qps=200 --kube-api-burst=400 \
    --kubeconfig="$K8S_HOME/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$K8S_HOME/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$K8S_HOME/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port=10257 --leader-elect=false \
    --controllers='*' --use-service-account-credentials=true \
    --cluster-signing-cert-file="$K8S_PKI/ca.crt" --cluster-signing-key-file="$K8S_PKI/ca.key" \
    --service-account-private-key-file="$K8S_PKI/sa.key" --root-ca-file="$K8S_PKI/ca.crt" \
    --service-cluster-ip-range="$K8S_SERVICE_CIDR" --allocate-node-cidrs=false \
    --profiling=false --v=1
  _k8s_start k8s-scheduler "$K8S_RUN/logs/kube-scheduler.log" "$(_k8s_bin kube-scheduler)" \
    --kubeconfig="$K8S_HOME/scheduler.kubeconfig" \
    --authentication-kubeconfig="$K8S_HOME/scheduler.kubeconfig" \
    --authorization-kubeconfig="$K8S_HOME/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port=10259 --leader-elect=false --profiling=false --v=1
}

# --- kube-proxy: Services (ClusterIP) work from pods and from this machine ---------------------------

_k8s_start_proxy() {
  local node_ip=$1
  [ -s "$K8S_PKI/kube-proxy.crt" ] || _k8s_cert kube-proxy "/CN=system:kube-proxy" "$_k8s_client_ext" \
    || te_die "kubernetes: issuing the kube-proxy certificate failed"
  [ -s "$K8S_HOME/kube-proxy.kubeconfig" ] || _k8s_kubeconfig "$K8S_HOME/kube-proxy.kubeconfig" kube-proxy
  # iptables mode: kube-proxy only adds its own KUBE-* chains (and the jumps to them); conntrack
  # limits and the other host sysctls are left alone.
  # (kube-proxy exits when its config file changes: written aside, replaced only when it differs)
  cat > "$K8S_HOME/kube-proxy.yaml.new" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $K8S_HOME/kube-proxy.kubeconfig
mode: iptables
clusterCIDR: $K8S_POD_CIDR
hostnameOverride: $K8S_NODE_NAME
bindAddress: $node_ip
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
  if cmp -s "$K8S_HOME/kube-proxy.yaml.new" "$K8S_HOME/kube-proxy.yaml"; then
    rm -f "$K8S_HOME/kube-proxy.yaml.new"
  else
    te_running k8s-proxy && te_stop k8s-proxy 20
    mv "$K8S_HOME/kube-proxy.yaml.new" "$K8S_HOME/kube-proxy.yaml"
  fi
  _k8s_start k8s-proxy "$K8S_RUN/logs/kube-proxy.log" "$(_k8s_bin kube-proxy)" \
    --config="$K8S_HOME/kube-proxy.yaml" --v=1
  te_wait_http "http://127.0.0.1:10256/healthz" 60 \
    || te_die "kube-proxy did not become healthy (see $K8S_RUN/logs/kube-proxy.log)"
}

_k8s_stop_proxy() {
  te_running k8s-proxy || return 0
  te_stop k8s-proxy 20
  # remove the rules it made (its own chains only)
  "$(_k8s_bin kube-proxy)" --cleanup --v=0 >> "$K8S_RUN/logs/kube-proxy.log" 2>&1 || true
}

# --- containerd, images, CNI, kubelet ---------------------------------------------------------------

_k8s_write_containerd_config() {
  mkdir -p "$K8S_HOME/cni/net.d" "$K8S_RUN/containerd/root" "$K8S_RUN/containerd/opt" "$K8S_CTRD_DIR"
  cat > "$K8S_HOME/containerd.toml" <<EOF
# juliarun's private containerd for the test node (not Docker's, not /run/containerd).
version = 2
root = "$K8S_RUN/containerd/root"
state = "$K8S_CTRD_DIR/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "$K8S_CTRD_SOCK"

[ttrpc]
  address = "$K8S_CTRD_DIR/containerd.sock.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$K8S_RUN/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$K8S_PAUSE_IMAGE"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  max_container_log_line_size = 16384
  # This machine withholds CAP_SYS_RESOURCE: no process may lower its oom_score_adj, so sandboxes (-998)
  # and Guaranteed pods (-997) would fail to start. Clamp to containerd's own score instead.
  restrict_oom_score_adj = true

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "$(command -v runc || echo /usr/sbin/runc)"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$K8S_HOME/cni/net.d"
    max_conf_num = 1

  # Images pushed to the test registry can be pulled over plain HTTP.
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."localhost:5000"]
    endpoint = ["http://localhost:5000"]
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."127.0.0.1:5000"]
    endpoint = ["http://127.0.0.1:5000"]
EOF
  cat > "$K8S_HOME/cni/net.d/10-juliarun.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "juliarun",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$K8S_CNI_BRIDGE",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$K8S_RUN/cni-ipam",
        "ranges": [[{"subnet": "$K8S_POD_CIDR"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
}

_k8s_start_containerd() {
  te_running k8s-containerd && [ -S "$K8S_CTRD_SOCK" ] && return 0
  _k8s_write_containerd_config
  rm -f "$K8S_CTRD_SOCK"
  _k8s_start k8s-containerd "$K8S_RUN/logs/containerd.log" containerd --config "$K8S_HOME/containerd.toml"
  local i
  for ((i = 0; i < 100; i++)); do
    [ -S "$K8S_CTRD_SOCK" ] && ctr -a "$K8S_CTRD_SOCK" version >/dev/null 2>&1 && return 0
    sleep 0.3
  done
  te_die "containerd did not come up (see $K8S_RUN/logs/containerd.log)"
}

# _k8s_import_image REF : copy a Docker engine image into the node's containerd, once per image ID.
_k8s_import_image() {
  local ref=$1 id mark
  id=$(docker image inspect --format '{{.Id}}' "$ref" 2>/dev/null) || { te_log "kubernetes: image $ref not in Docker"; return 1; }
  mark="$K8S_RUN/containerd/imported-$(echo "$ref" | tr '/:' '__')"
  if [ "$(cat "$mark" 2>/dev/null)" = "$id" ] && _k8s_ctr images ls -q 2>/dev/null | grep -qxF "$ref"; then
    return 0
  fi
  te_log "kubernetes: importing $ref into the node's containerd"
  docker save "$ref" | _k8s_ctr images import - >/dev/null || { te_log "kubernetes: import of $ref failed"; return 1; }
  # docker save names images docker.io/... only when they are unqualified; tag the plain reference too.
  _k8s_ctr images ls -q | grep -qxF "$ref" || _k8s_ctr images tag "docker.io/$ref" "$ref" >/dev/null 2>&1 || true
  echo "$id" > "$mark"
}

# The pause image, rebuilt when pause.c changes (its hash is the image's juliarun.io/recipe label).
_k8s_pause_image() {
  local ctx recipe
  recipe=$(sha256sum "$_k8s_here/kubernetes/pause.c" | cut -c1-12)
  [ "$(docker image inspect --format '{{index .Config.Labels "juliarun.io/recipe"}}' "$K8S_PAUSE_IMAGE" 2>/dev/null)" = "$recipe" ] \
    && return 0
  ctx=$(mktemp -d)
  gcc -static -O2 -o "$ctx/pause" "$_k8s_here/kubernetes/pause.c" || { rm -rf "$ctx"; te_die "building pause failed (gcc, libc6-dev)"; }
  strip "$ctx/pause" 2>/dev/null || true
  printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' > "$ctx/Dockerfile"
  if ! docker build -q --label "juliarun.io/recipe=$recipe" -t "$K8S_PAUSE_IMAGE" "$ctx" >"$ctx/build.log" 2>&1; then
    cat "$ctx/build.log" >&2; rm -rf "$ctx"; te_die "docker build of the pause image failed"
  fi
  rm -rf "$ctx"
}

# Docker (for the pause image) and the test images come from the docker/images components, which also
# bring up the registry. The julia, base and git images are imported under their registry names.
_k8s_images() {
  local f img imgs=()
  for f in docker images; do
    [ -f "$_k8s_here/$f.sh" ] || continue
    # shellcheck disable=SC1090
    declare -F "${f}_up" >/dev/null || . "$_k8s_here/$f.sh"
  done
  if declare -F images_up >/dev/null; then
    images_up || te_die "kubernetes: the images component failed"
  elif declare -F docker_up >/dev/null; then
    docker_up || te_die "kubernetes: the docker component failed"
  fi
  docker info >/dev/null 2>&1 || te_die "kubernetes needs the Docker engine (scripts/testenv up docker)"
  _k8s_pause_image
  _k8s_import_image "$K8S_PAUSE_IMAGE" || te_die "could not import the pause image"
  if declare -F images_env >/dev/null; then
    mapfile -t imgs < <(images_env | sed -n 's/^export JULIARUN_\(JULIA\|BASE\|GIT\)_IMAGE=//p')
  fi
  for img in "${imgs[@]}"; do
    _k8s_import_image "$img" || te_die "kubernetes: could not import $img into the node's containerd"
  done
}

_k8s_start_kubelet() {
  local node_ip=$1
  te_running k8s-kubelet && return 0
  mkdir -p "$K8S_RUN/kubelet" "$K8S_RUN/pod-logs"
  cat > "$K8S_HOME/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $node_ip
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $K8S_PKI/kubelet.crt
tlsPrivateKeyFile: $K8S_PKI/kubelet.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $K8S_PKI/ca.crt}
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix://$K8S_CTRD_SOCK
imageServiceEndpoint: unix://$K8S_CTRD_SOCK
cgroupDriver: cgroupfs
cgroupsPerQOS: true
failCgroupV1: false
failSwapOn: false
# Never act on the host: no allocatable enforcement, no eviction, no image GC.
enforceNodeAllocatable: []
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "0%"
  nodefs.inodesFree: "0%"
  imagefs.available: "0%"
  imagefs.inodesFree: "0%"
evictionSoft: {}
evictionPressureTransitionPeriod: 30s
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
imageMinimumGCAge: 87600h
podLogsDir: $K8S_RUN/pod-logs
maxPods: 110
serializeImagePulls: false
registerNode: true
rotateCertificates: false
serverTLSBootstrap: false
resolvConf: /etc/resolv.conf
hairpinMode: hairpin-veth
volumePluginDir: $K8S_RUN/kubelet/volume-plugins
nodeStatusReportFrequency: 1m
shutdownGracePeriod: 0s
# No kube-proxy: leave the host's iptables alone (no KUBE-FIREWALL chain in INPUT/OUTPUT).
makeIPTablesUtilChains: false
# No CAP_SYS_RESOURCE here: the kubelet cannot lower its own oom_score_adj.
oomScoreAdj: 0
localStorageCapacityIsolation: true
EOF
  _k8s_start k8s-kubelet "$K8S_RUN/logs/kubelet.log" "$(_k8s_bin kubelet)" \
    --config="$K8S_HOME/kubelet.yaml" --kubeconfig="$K8S_HOME/kubelet.kubeconfig" \
    --root-dir="$K8S_RUN/kubelet" --hostname-override="$K8S_NODE_NAME" --node-ip="$node_ip" \
    --node-labels="$K8S_NODE_LABELS" --v=1
}

# At start the kubelet sets vm.overcommit_memory=1, kernel.panic=10, kernel.panic_on_oops=1 (it can
# only refuse to start otherwise). On this shared machine an oops must not reboot it: put the host's
# values back once the node is up (the kubelet applies them only at start). The host's values are
# recorded once, before any kubelet ran.
_K8S_SYSCTLS=(vm.overcommit_memory kernel.panic kernel.panic_on_oops vm.panic_on_oom)
_k8s_save_sysctls() {
  local f=$K8S_RUN/host-sysctls k
  [ -s "$f" ] && return 0
  for k in "${_K8S_SYSCTLS[@]}"; do echo "$k=$(sysctl -n "$k")"; done > "$f.tmp" && mv "$f.tmp" "$f"
}
_k8s_restore_sysctls() {
  local f=$K8S_RUN/host-sysctls line
  [ -s "$f" ] || return 0
  while read -r line; do sysctl -qw "$line" || true; done < "$f"
}

_k8s_wait_node_ready() {
  local i s
  # A restarted kubelet finds its node still marked Ready: wait for the kubelet itself first.
  te_wait_http http://127.0.0.1:10248/healthz 120 || te_die "the kubelet did not become healthy (see $K8S_RUN/logs/kubelet.log)"
  for ((i = 0; i < 180; i++)); do
    s=$(_k8s_kubectl get node "$K8S_NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null || true)
    [ "$s" = "True" ] && return 0
    te_running k8s-kubelet || break
    sleep 1
  done
  te_die "node $K8S_NODE_NAME did not become Ready (see $K8S_RUN/logs/kubelet.log)"
}

# --- component interface ----------------------------------------------------------------------------

kubernetes_up() {
  local node_ip
  build_k8s || te_die "building Kubernetes $K8S_VERSION failed (see $TE_SRC/build-times.log)"
  build_etcd || te_die "building etcd $ETCD_VERSION failed"
  _k8s_host_prep
  mkdir -p "$K8S_HOME" "$K8S_RUN/logs"
  node_ip=$(_k8s_node_ip)
  _k8s_pki "$node_ip" || te_die "generating the PKI failed"
  _k8s_start_etcd
  _k8s_start_apiserver "$node_ip"
  _k8s_start_controllers
  _k8s_start_containerd
  _k8s_images
  _k8s_save_sysctls
  _k8s_start_kubelet "$node_ip"
  _k8s_wait_node_ready
  _k8s_restore_sysctls
  _k8s_start_proxy "$node_ip"
  # A re-registered node keeps its old labels; make sure ours is there.
  _k8s_kubectl label node "$K8S_NODE_NAME" --overwrite "$K8S_NODE_LABELS" >/dev/null
}

# Kill every container of the node (so no pod keeps a listener) without losing containerd's metadata;
# the kubelet cleans up sandboxes and their networks on the next start.
_k8s_kill_containers() {
  [ -S "$K8S_CTRD_SOCK" ] || return 0
  local t
  for t in $(_k8s_ctr tasks ls -q 2>/dev/null); do
    _k8s_ctr tasks kill -a -s SIGKILL "$t" >/dev/null 2>&1 || true
  done
  sleep 1
  for t in $(_k8s_ctr tasks ls -q 2>/dev/null); do
    _k8s_ctr tasks delete -f "$t" >/dev/null 2>&1 || true
  done
}

kubernetes_down() {
  _k8s_stop_proxy
  te_stop k8s-kubelet 30
  _k8s_restore_sysctls
  _k8s_kill_containers
  te_stop k8s-containerd 20
  # Sandboxes' /dev/shm and volume mounts under our own directories only.
  local m
  # (the kubelet also bind-mounts its root dir onto itself to make it shared)
  awk -v a="$K8S_CTRD_DIR" -v b="$K8S_RUN/kubelet" \
    '$2 == a || $2 == b || index($2, a "/") == 1 || index($2, b "/") == 1 {print $2}' /proc/mounts \
    | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  te_stop k8s-scheduler
  te_stop k8s-controller-manager
  te_stop k8s-apiserver 30
  te_stop k8s-etcd 30
}

kubernetes_status() {
  local v ready
  if ! [ -x "$(_k8s_bin kubectl)" ] || ! [ -s "$K8S_KUBECONFIG" ]; then
    printf 'kubernetes\t%s\t%s' "$K8S_VERSION" "$K8S_API_URL"; return 1
  fi
  v=$(curl -fsS --max-time 3 --cacert "$K8S_PKI/ca.crt" "$K8S_API_URL/version" 2>/dev/null \
    | sed -n 's/.*"gitVersion": *"\([^"]*\)".*/\1/p')
  ready=$(_k8s_kubectl get node "$K8S_NODE_NAME" --request-timeout=5s \
    -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)
  printf 'kubernetes\t%s\t%s (node %s Ready=%s)' "${v:-$K8S_VERSION}" "$K8S_API_URL" "$K8S_NODE_NAME" "${ready:-?}"
  [ -n "$v" ] && [ "$ready" = "True" ]
}

kubernetes_env() {
  echo "export KUBECONFIG=$K8S_KUBECONFIG"
  echo "export JULIARUN_KUBECONFIG=$K8S_KUBECONFIG"
  echo "export JULIARUN_KUBE_NODE=$K8S_NODE_NAME"
  echo "export JULIARUN_KUBE_NODE_SELECTOR=$K8S_NODE_LABELS"
  echo "export JULIARUN_KUBECTL=$(_k8s_bin kubectl)"
  # Pods reach services on the host through the node address (the apiserver itself is loopback-only).
  echo "export JULIARUN_KUBE_HOST_IP=$(cat "$K8S_PKI/node-ip" 2>/dev/null || _k8s_node_ip)"
}
