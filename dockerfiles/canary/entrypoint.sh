#!/bin/sh
# Entrypoint of the voltabuild canary. POSIX sh, not bash: a busybox image has no bash.
#
#   entrypoint.sh [CMD...]   report the GPUs (if any), then exec CMD (default: a shell)
#   entrypoint.sh --check    the smoke test: prove the image is sane; exit 1 if anything is off
#
# The canary needs no GPU: without one it says so and still passes, unless
# VOLTABUILD_REQUIRE_GPU=1, which makes a missing GPU fatal (use it on GPU hosts to prove
# the GPUs reach the container).
set -eu

log() { printf '%s canary: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

VERSION_FILE=${CANARY_VERSION_FILE:-/etc/voltabuild/canary-version}
SMI_TIMEOUT=${VOLTABUILD_NVIDIA_SMI_TIMEOUT:-30}  # seconds; a wedged driver can hang nvidia-smi

# Logs the GPUs nvidia-smi lists; returns 1 when there are none.
report_gpus() {
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    log "GPU: none visible (no nvidia-smi in this container; the canary does not need one)"
    return 1
  fi
  if ! gpus=$(timeout "$SMI_TIMEOUT" nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader 2>&1) \
      || [ -z "$gpus" ]; then
    log "GPU: none visible (nvidia-smi: ${gpus:-no GPU listed})"
    return 1
  fi
  printf '%s\n' "$gpus" | while IFS= read -r line; do log "GPU ${line}"; done
}

gpu_gate() {
  report_gpus && return 0
  if [ "${VOLTABUILD_REQUIRE_GPU:-0}" = 1 ]; then
    die "VOLTABUILD_REQUIRE_GPU=1 but no GPU is visible: run the container with --gpus all"
  fi
  return 0
}

# The smoke test: version readable, not running as root, a file can be written and read back.
check() {
  failed=0
  if version=$(cat "$VERSION_FILE" 2>/dev/null) && [ -n "$version" ]; then
    log "canary version ${version}"
  else
    log "FAIL: cannot read the canary version from ${VERSION_FILE}"; failed=1
  fi
  if [ "$(id -u)" = 0 ]; then
    log "FAIL: running as root; the image should run as its non-root user"; failed=1
  else
    log "running as $(id -un 2>/dev/null || id -u) (uid $(id -u))"
  fi
  probe="${TMPDIR:-/tmp}/canary-check.$$"
  if printf 'voltabuild canary %s\n' "${version:-?}" >"$probe" 2>/dev/null \
      && [ "$(cat "$probe")" = "voltabuild canary ${version:-?}" ]; then
    log "write and read back ${probe}: ok"
  else
    log "FAIL: cannot write and read back ${probe}"; failed=1
  fi
  rm -f "$probe" 2>/dev/null || true
  [ "$failed" = 0 ] || die "smoke test failed"
  log "smoke test passed"
}

main() {
  # `docker run IMAGE /usr/local/bin/entrypoint.sh --check` (the buildspec's smoke test given as
  # the command) arrives with this script as $1: run the check once.
  if [ "${1:-}" = "$0" ] && [ "${2:-}" = --check ]; then shift; fi
  if [ "${1:-}" = --check ]; then
    gpu_gate
    check
    exit 0
  fi
  gpu_gate
  [ "$#" -gt 0 ] || set -- /bin/sh
  exec "$@"
}

main "$@"
