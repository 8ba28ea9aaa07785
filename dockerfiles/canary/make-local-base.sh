#!/usr/bin/env bash
# Makes a tiny busybox base image in local buildah storage from Debian's busybox-static, so the
# canary builds with no network at all (the local stack and the tests use it as BASE_IMAGE).
#
#   make-local-base.sh [IMAGE]      default IMAGE: localhost/voltabuild/busybox:local
#
# Idempotent: an image already in storage is kept (FORCE=1 rebuilds it). Runs as root with
# buildah; STORAGE_DRIVER (default vfs) must match what the later builds use.
# Needs /bin/busybox from Debian's busybox-static (`bash scripts/system-deps.sh` installs it).
set -euo pipefail

IMAGE=${1:-localhost/voltabuild/busybox:local}
BUSYBOX=${BUSYBOX:-/bin/busybox}
BUILDAH=(buildah --storage-driver "${STORAGE_DRIVER:-vfs}")

log() { printf '%s make-local-base: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

preflight() {
  command -v buildah >/dev/null || die "buildah is not installed (apt-get install buildah)"
  [[ $(id -u) -eq 0 ]] || die "run as root: buildah here uses root storage with chroot isolation"
  [[ -x $BUSYBOX ]] || die "$BUSYBOX not found: install Debian's busybox-static (bash scripts/system-deps.sh)"
  # A dynamically linked busybox would need its libraries inside the image.
  if command -v ldd >/dev/null && ldd "$BUSYBOX" >/dev/null 2>&1; then
    die "$BUSYBOX is dynamically linked; use the one from busybox-static"
  fi
}

image_exists() {
  "${BUILDAH[@]}" inspect --type image "$IMAGE" >/dev/null 2>&1
}

# Lays out a minimal root file system under $1: busybox with one link per applet in /bin,
# /usr/bin/env, root and nobody accounts, a world-writable /tmp.
make_rootfs() {
  local root=$1 applet
  mkdir -p "$root"/{bin,usr/bin,etc,tmp,root,home}
  cp "$BUSYBOX" "$root/bin/busybox"
  while IFS= read -r applet; do
    [[ $applet == busybox ]] || ln -sf busybox "$root/bin/$applet"
  done < <("$BUSYBOX" --list)
  ln -sf ../../bin/busybox "$root/usr/bin/env"
  printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' 'nobody:x:65534:65534:nobody:/nonexistent:/bin/false' >"$root/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nogroup:x:65534:' >"$root/etc/group"
  chmod 1777 "$root/tmp"
  chmod 0700 "$root/root"
}

WORK=""
CTR=""
cleanup() {
  [[ -z $CTR ]] || "${BUILDAH[@]}" rm "$CTR" >/dev/null 2>&1 || true
  [[ -z $WORK ]] || rm -rf "$WORK"
}

build_image() {
  local work version
  WORK=$(mktemp -d)
  work=$WORK
  trap cleanup EXIT
  make_rootfs "$work/rootfs"
  tar -C "$work/rootfs" --numeric-owner --owner=0 --group=0 -cf "$work/rootfs.tar" .
  version=$("$BUSYBOX" 2>&1 | head -n1 || true)
  CTR=$("${BUILDAH[@]}" from scratch)
  "${BUILDAH[@]}" add "$CTR" "$work/rootfs.tar" / >/dev/null
  "${BUILDAH[@]}" config --cmd /bin/sh --env PATH=/usr/local/bin:/usr/bin:/bin \
    --label "org.opencontainers.image.description=busybox made locally from Debian busybox-static: ${version}" \
    "$CTR"
  "${BUILDAH[@]}" commit --quiet --rm "$CTR" "$IMAGE" >/dev/null
  CTR=""
}

main() {
  preflight
  if image_exists && [[ ${FORCE:-0} != 1 ]]; then
    log "$IMAGE is already in local storage"
    return 0
  fi
  log "making $IMAGE from $BUSYBOX"
  build_image
  log "made $IMAGE"
}

main "$@"
