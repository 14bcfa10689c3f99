#!/usr/bin/env bash
# Build Kubernetes server binaries, etcd and kwok from the Go module proxy (no GitHub, no dl.k8s.io).
# Sourced by kubernetes.sh / kwok.sh, or run on its own:
#   scripts/testenv.d/kubernetes-build.sh [k8s|etcd|kwok|all]
# Binaries are cached in $TE_BIN/kubernetes-<ver>/, $TE_BIN/etcd-<ver>/, $TE_BIN/kwok-<ver>/; a binary that
# already exists there is not rebuilt. Every Go build runs through te_go_locked (one at a time, -p=2).
# Build timings and peak RSS go to $TE_SRC/build-times.log.

K8S_VERSION=${JULIARUN_K8S_VERSION:-v1.34.4}
ETCD_VERSION=${JULIARUN_ETCD_VERSION:-v3.6.16}
KWOK_VERSION=${JULIARUN_KWOK_VERSION:-v0.8.0}
K8S_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl kube-proxy)
# Staging modules of k8s.io/kubernetes: each is published as k8s.io/<m> v0.<minor>.<patch>, and the
# kubernetes module itself requires them as v0.0.0 with replace => ./staging/..., which a dependent module
# ignores, so the wrapper module pins every one of them.
K8S_STAGING=(api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider
  cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api cri-client
  csi-translation-lib dynamic-resource-allocation endpointslice externaljwt kms kube-aggregator
  kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics mount-utils
  pod-security-admission sample-apiserver sample-cli-plugin sample-controller)

k8s_bin_dir() { echo "$TE_BIN/kubernetes-$K8S_VERSION"; }
etcd_bin_dir() { echo "$TE_BIN/etcd-$ETCD_VERSION"; }
kwok_bin_dir() { echo "$TE_BIN/kwok-$KWOK_VERSION"; }

_kb_go() { PATH=/usr/local/go/bin:$PATH GOTOOLCHAIN=local CGO_ENABLED=0 "$@"; }

# _kb_timed LABEL CMD... : run CMD under the Go lock, recording wall time and peak RSS (of the biggest child).
_kb_timed() {
  local label=$1; shift
  local tf rc t0=$SECONDS
  tf=$(mktemp)
  te_go_locked /usr/bin/time -f '%M' -o "$tf" "$@"; rc=$?
  printf '%s\t%s\t%ss\tpeak_rss=%sMiB\trc=%s\n' "$(date -Is)" "$label" "$((SECONDS - t0))" \
    "$(($(tail -1 "$tf" 2>/dev/null || echo 0) / 1024))" "$rc" >> "$TE_SRC/build-times.log"
  te_log "built $label in $((SECONDS - t0))s (rc $rc)"
  rm -f "$tf"
  return "$rc"
}

_kb_k8s_module() {
  local mod=$TE_SRC/kubernetes-$K8S_VERSION minor patch m
  minor=$(echo "$K8S_VERSION" | cut -d. -f2); patch=$(echo "$K8S_VERSION" | cut -d. -f3)
  if [ -f "$mod/.ready" ]; then
    # A module resolved for fewer binaries gets the packages of the new ones added.
    local missing=() b
    for b in "${K8S_BINARIES[@]}"; do grep -qx "$b" "$mod/.ready" || missing+=("$b"); done
    if [ ${#missing[@]} -gt 0 ]; then
      local more=()
      for b in "${missing[@]}"; do more+=("k8s.io/kubernetes/cmd/$b@$K8S_VERSION"); done
      te_log "resolving k8s.io/kubernetes $K8S_VERSION modules for ${missing[*]}"
      (cd "$mod" && te_go_locked env "PATH=/usr/local/go/bin:$PATH" GOTOOLCHAIN=local go get "${more[@]}") >&2 \
        || { te_log "resolving the modules of ${missing[*]} failed"; return 1; }
      printf '%s\n' "${K8S_BINARIES[@]}" > "$mod/.ready"
    fi
    echo "$mod"; return 0
  fi
  mkdir -p "$mod"
  (
    cd "$mod" || exit 1
    rm -f go.mod go.sum
    _kb_go go mod init juliarun.local/kubernetes-build >/dev/null 2>&1 || exit 1
    for m in "${K8S_STAGING[@]}"; do
      _kb_go go mod edit "-replace=k8s.io/$m=k8s.io/$m@v0.$minor.$patch" || exit 1
    done
    local pkgs=() b
    for b in "${K8S_BINARIES[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b@$K8S_VERSION"); done
    te_log "resolving k8s.io/kubernetes $K8S_VERSION modules"
    te_go_locked env "PATH=/usr/local/go/bin:$PATH" GOTOOLCHAIN=local go get "${pkgs[@]}" || exit 1
  ) >&2 || { te_log "preparing the kubernetes wrapper module failed"; return 1; }
  printf '%s\n' "${K8S_BINARIES[@]}" > "$mod/.ready"
  echo "$mod"
}

# build_k8s [BIN...] : build the named binaries (default all) into $(k8s_bin_dir).
build_k8s() {
  local out mod b pkg ldflags major minor
  out=$(k8s_bin_dir); mkdir -p "$out"
  local want=("$@"); [ ${#want[@]} -eq 0 ] && want=("${K8S_BINARIES[@]}")
  local todo=()
  for b in "${want[@]}"; do [ -x "$out/$b" ] || todo+=("$b"); done
  [ ${#todo[@]} -eq 0 ] && return 0
  mod=$(_kb_k8s_module) || return 1
  major=$(echo "${K8S_VERSION#v}" | cut -d. -f1); minor=$(echo "$K8S_VERSION" | cut -d. -f2)
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  for b in "${todo[@]}"; do
    te_log "building $b $K8S_VERSION (this takes minutes on a cold cache)"
    (cd "$mod" && _kb_timed "$b-$K8S_VERSION" env "PATH=/usr/local/go/bin:$PATH" GOTOOLCHAIN=local CGO_ENABLED=0 \
      go build -trimpath -buildvcs=false -ldflags "$ldflags" -o "$out/$b.tmp" "k8s.io/kubernetes/cmd/$b") || return 1
    mv "$out/$b.tmp" "$out/$b"
  done
}

build_etcd() {
  local out mod
  out=$(etcd_bin_dir)
  [ -x "$out/etcd" ] && return 0
  mkdir -p "$out"; mod=$TE_SRC/etcd-$ETCD_VERSION; mkdir -p "$mod"
  (
    cd "$mod" || exit 1
    if [ ! -f .ready ]; then
      rm -f go.mod go.sum
      _kb_go go mod init juliarun.local/etcd-build >/dev/null 2>&1 || exit 1
      te_go_locked env "PATH=/usr/local/go/bin:$PATH" GOTOOLCHAIN=local go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" || exit 1
      touch .ready
    fi
    _kb_timed "etcd-$ETCD_VERSION" env "PATH=/usr/local/go/bin:$PATH" GOTOOLCHAIN=local CGO_ENABLED=0 \
      go build -trimpath -buildvcs=false -ldflags "-s -w" -o "$out/etcd.tmp" go.etcd.io/etcd/server/v3 || exit 1
  ) >&2 || { te_log "building etcd failed"; return 1; }
  mv "$out/etcd.tmp" "$out/etcd"
}

build_kwok() {
  local out mod
  out=$(kwok_bin_dir)
  [ -x "$out/kwok" ] && [ -f "$out/stages/pod-delete.yaml" ] && return 0
  mkdir -p "$out"; mod=$TE_SRC/kwok-$KWOK_VERSION; mkdir -p "$mod"
  (
    cd "$mod" || exit 1
    if [ ! -f .ready ]; then
      rm -f go.mod go.sum
      _kb_go go mod init juliarun.local/kwok-build >/dev/null 2>&1 || exit 1
      te_go_locked env "PATH=/usr/local/go/bin:$PATH" GOTOOLCHAIN=local go get "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" || exit 1
      touch .ready
    fi
    _kb_timed "kwok-$KWOK_VERSION" env "PATH=/usr/local/go/bin:$PATH" GOTOOLCHAIN=local CGO_ENABLED=0 \
      go build -trimpath -buildvcs=false -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" \
      -o "$out/kwok.tmp" sigs.k8s.io/kwok/cmd/kwok || exit 1
    # kwok's standalone controller has no built-in stages: keep the upstream "fast" node/pod stages
    # (shipped in the module) next to the binary; kwok.sh assembles its config from them.
    local dir s
    dir=$(_kb_go go list -m -f '{{.Dir}}' sigs.k8s.io/kwok) || exit 1
    mkdir -p "$out/stages"
    for s in node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease \
      pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete; do
      install -m 0644 "$dir/kustomize/stage/$s.yaml" "$out/stages/" || exit 1
    done
  ) >&2 || { te_log "building kwok failed"; return 1; }
  mv "$out/kwok.tmp" "$out/kwok"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -uo pipefail
  _kb_here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  # shellcheck source=lib.sh
  . "$_kb_here/lib.sh"
  case "${1:-all}" in
    k8s) shift; build_k8s "$@" ;;
    etcd) build_etcd ;;
    kwok) build_kwok ;;
    all) build_k8s && build_etcd && build_kwok ;;
    *) echo "usage: $0 [k8s [BIN...]|etcd|kwok|all]" >&2; exit 2 ;;
  esac
fi
