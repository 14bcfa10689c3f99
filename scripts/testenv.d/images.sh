# Base images, built locally (no container registry is reachable) and pushed to the local registry:
#   localhost:5000/juliarun/bookworm:minbase-<recipe hash>   debootstrap --variant=minbase bookworm
#   localhost:5000/juliarun/julia:1.5.3                      images/julia/Dockerfile FROM the base
#   localhost:5000/juliarun/git:<recipe hash>                images/git/Dockerfile FROM the base
# The debootstrapped rootfs tarball is cached under $TE_SRC/images, so a fresh Docker image store
# re-imports it instead of running debootstrap again. Every image carries the label
# juliarun.io/recipe=<hash of what built it>; an image whose label matches is neither rebuilt nor,
# when the registry holds the same digest, pushed again. Needs the docker and registry components.

IMAGES_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
IMAGES_DOCKERFILES=$IMAGES_HERE/images
IMAGES_CACHE=$TE_SRC/images
IMAGES_LOGS=$TE_RUN/images
IMAGES_REGISTRY=localhost:5000          # tag prefix (see registry.sh)
IMAGES_REGISTRY_URL=http://127.0.0.1:5000
IMAGES_SUITE=bookworm
IMAGES_JULIA_VERSION=1.5.3

# _images_mirror [security] : the Debian mirror URL the machine's apt sources use.
_images_mirror() {
  local want=debian re
  [ "${1:-}" = security ] && want=debian-security
  re="/${want}/?\$"
  {
    awk '/^URIs:/ {for (i = 2; i <= NF; i++) print $i}' /etc/apt/sources.list.d/*.sources 2>/dev/null
    awk '/^deb / {print ($2 ~ /^\[/ ? $3 : $2)}' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
      2>/dev/null
  } | grep -E "$re" | head -1 | sed 's:/*$::' || true
}

# _images_sources MIRROR SECURITY_MIRROR : deb822 apt sources written into the base image.
_images_sources() {
  printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\n' "$1" "$IMAGES_SUITE" \
    "$IMAGES_SUITE"
  printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
  [ -n "$2" ] || return 0
  printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\n' "$2" "$IMAGES_SUITE"
  printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
}

# _images_build_rootfs OUT.tar.gz MIRROR SECURITY_MIRROR : debootstrap the base rootfs into a tarball.
_images_build_rootfs() {
  local out=$1 mirror=$2 security=$3 root
  root=$IMAGES_CACHE/rootfs.tmp
  _images_rm_root "$root"
  mkdir -p "$root"
  te_log "images: debootstrap --variant=minbase $IMAGES_SUITE from $mirror"
  if ! debootstrap --variant=minbase "$IMAGES_SUITE" "$root" "$mirror" \
    > "$IMAGES_LOGS/debootstrap.log" 2>&1; then
    _images_rm_root "$root"
    te_die "images: debootstrap failed; see $IMAGES_LOGS/debootstrap.log"
  fi
  rm -f "$root/etc/apt/sources.list"
  _images_sources "$mirror" "$security" > "$root/etc/apt/sources.list.d/debian.sources"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/*.log \
    "$root"/debootstrap "$root"/etc/hostname
  : > "$root/etc/resolv.conf"
  tar --numeric-owner --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -C "$root" -c . \
    | gzip -1 > "$out.tmp" || { _images_rm_root "$root"; te_die "images: tar of the rootfs failed"; }
  mv "$out.tmp" "$out"
  _images_rm_root "$root"
}

# _images_rm_root DIR : remove a (possibly half-built) chroot without crossing into mounts.
_images_rm_root() {
  local d=$1
  [ -d "$d" ] || return 0
  awk -v d="$d" '$2 == d || index($2, d "/") == 1 {print $2}' /proc/mounts | sort -r \
    | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  rm -rf --one-file-system "$d"
}

_images_hash() { sha256sum | cut -c1-12; }

# The base image's recipe hash: the build function itself, the suite and the mirrors.
_images_base_hash() {
  { declare -f _images_build_rootfs _images_sources; echo "$IMAGES_SUITE $(_images_mirror)";
    _images_mirror security; } | _images_hash
}
_images_base_ref() { echo "$IMAGES_REGISTRY/juliarun/$IMAGES_SUITE:minbase-$(_images_base_hash)"; }
_images_julia_ref() { echo "$IMAGES_REGISTRY/juliarun/julia:$IMAGES_JULIA_VERSION"; }
_images_julia_hash() {
  { cat "$IMAGES_DOCKERFILES/julia/Dockerfile"; _images_base_ref; } | _images_hash
}
_images_git_hash() {
  { cat "$IMAGES_DOCKERFILES/git/Dockerfile"; _images_base_ref; } | _images_hash
}
_images_git_ref() { echo "$IMAGES_REGISTRY/juliarun/git:$(_images_git_hash)"; }

# _images_label REF : the recipe label of the local image REF (empty when absent).
_images_label() {
  docker image inspect -f '{{index .Config.Labels "juliarun.io/recipe"}}' "$1" 2>/dev/null || true
}

# _images_remote_digest REF : the digest the registry holds for REF (empty when none).
_images_remote_digest() {
  local ref=$1 repo tag
  repo=${ref%:*}; tag=${ref##*:}; repo=${repo#"$IMAGES_REGISTRY"/}
  curl -fsSI --max-time 10 \
    -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
    -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    "$IMAGES_REGISTRY_URL/v2/$repo/manifests/$tag" 2>/dev/null \
    | tr -d '\r' | awk 'tolower($1) == "docker-content-digest:" {print $2}'
}

# _images_in_sync REF HASH : the local image has the recipe HASH and the registry has its digest.
_images_in_sync() {
  local ref=$1 hash=$2 digest
  [ "$(_images_label "$ref")" = "$hash" ] || return 1
  digest=$(_images_remote_digest "$ref")
  [ -n "$digest" ] || return 1
  docker image inspect -f '{{join .RepoDigests "\n"}}' "$ref" 2>/dev/null | grep -qxF "${ref%:*}@$digest"
}

# _images_ensure REF HASH BUILD_FN : make the local engine and the registry hold REF built by
# recipe HASH: pull it from the registry when only the registry has it, else build with BUILD_FN.
_images_ensure() {
  local ref=$1 hash=$2 build=$3
  _images_in_sync "$ref" "$hash" && return 0
  if [ "$(_images_label "$ref")" != "$hash" ] && [ -n "$(_images_remote_digest "$ref")" ]; then
    docker pull -q "$ref" > /dev/null 2>&1 || true
    [ "$(_images_label "$ref")" = "$hash" ] && te_log "images: pulled $ref from the local registry"
  fi
  if [ "$(_images_label "$ref")" != "$hash" ]; then
    "$build" "$ref" "$hash"
    [ "$(_images_label "$ref")" = "$hash" ] || te_die "images: building $ref did not give recipe $hash"
  fi
  _images_in_sync "$ref" "$hash" && return 0
  te_log "images: docker push $ref"
  docker push -q "$ref" > "$IMAGES_LOGS/push.log" 2>&1 \
    || te_die "images: docker push $ref failed; see $IMAGES_LOGS/push.log"
}

_images_build_base() {
  local ref=$1 hash=$2 mirror security tarball
  mirror=$(_images_mirror); security=$(_images_mirror security)
  [ -n "$mirror" ] || te_die "images: cannot find the Debian mirror in the apt sources"
  tarball=$IMAGES_CACHE/$IMAGES_SUITE-minbase-$hash.tar.gz
  if [ ! -s "$tarball" ]; then
    te_apt debootstrap
    _images_build_rootfs "$tarball" "$mirror" "$security"
  fi
  te_log "images: docker import $tarball as $ref"
  docker import \
    --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' \
    --change "LABEL juliarun.io/recipe=$hash" --change "LABEL app.kubernetes.io/part-of=juliarun" \
    - "$ref" < "$tarball" > /dev/null || te_die "images: docker import of $tarball failed"
}

# _images_docker_build REF HASH DIR : build images/DIR/Dockerfile FROM the base image as REF.
_images_docker_build() {
  local ref=$1 hash=$2 dir=$3
  te_log "images: docker build $ref"
  DOCKER_BUILDKIT=0 docker build --rm --force-rm --label "juliarun.io/recipe=$hash" \
    --label app.kubernetes.io/part-of=juliarun --build-arg "BASE=$(_images_base_ref)" \
    -t "$ref" "$IMAGES_DOCKERFILES/$dir" > "$IMAGES_LOGS/$dir-build.log" 2>&1 \
    || te_die "images: docker build $ref failed; see $IMAGES_LOGS/$dir-build.log"
}

_images_build_git() {
  local ref=$1 hash=$2 out
  _images_docker_build "$ref" "$hash" git
  out=$(docker run --rm --network none "$ref" git --version 2>&1) || true
  case $out in "git version "*) ;; *) te_die "images: $ref: 'git --version' printed '$out'" ;; esac
}

_images_build_julia() {
  local ref=$1 hash=$2 out
  _images_docker_build "$ref" "$hash" julia
  out=$(docker run --rm --network none "$ref" julia --version 2>&1) || true
  [ "$out" = "julia version $IMAGES_JULIA_VERSION" ] \
    || te_die "images: $ref: 'julia --version' printed '$out', not 'julia version $IMAGES_JULIA_VERSION'"
}

images_up() {
  # Needs the engine and the registry; bring them up (both are idempotent and fast when up).
  local c
  for c in docker registry; do
    if ! declare -F "${c}_up" > /dev/null; then
      # shellcheck disable=SC1090
      . "$IMAGES_HERE/$c.sh"
    fi
    "${c}_up" || te_die "images: component '$c' did not come up (scripts/testenv up $c)"
  done
  mkdir -p "$IMAGES_CACHE" "$IMAGES_LOGS"
  local lock
  exec {lock}> "$IMAGES_CACHE/build.lock"
  flock "$lock"
  _images_ensure "$(_images_base_ref)" "$(_images_base_hash)" _images_build_base
  _images_ensure "$(_images_julia_ref)" "$(_images_julia_hash)" _images_build_julia
  _images_ensure "$(_images_git_ref)" "$(_images_git_hash)" _images_build_git
  exec {lock}>&-
}

images_down() { :; }   # nothing runs; images stay in the engine, the registry and the cache

images_status() {
  local base julia git
  base=$(_images_base_ref); julia=$(_images_julia_ref); git=$(_images_git_ref)
  printf 'images\t%s,%s,%s\t%s' "${base##*/}" "${julia##*/}" "${git##*/}" "$IMAGES_REGISTRY"
  _images_in_sync "$base" "$(_images_base_hash)" && _images_in_sync "$julia" "$(_images_julia_hash)" \
    && _images_in_sync "$git" "$(_images_git_hash)"
}

images_env() {
  echo "export JULIARUN_BASE_IMAGE=$(_images_base_ref)"
  echo "export JULIARUN_JULIA_IMAGE=$(_images_julia_ref)"
  echo "export JULIARUN_GIT_IMAGE=$(_images_git_ref)"
}
