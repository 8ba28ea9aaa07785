#!/usr/bin/env bash
# Entrypoint of the voltabuild GPU images (pytorch, tensorflow, mxnet).
#
#   entrypoint.sh [CMD...]   report the driver, the GPUs and what the framework sees, then exec CMD
#                            (the image's CMD starts Jupyter; with no CMD at all, a shell)
#   entrypoint.sh --check    the smoke test: the same report plus a matrix multiply on the GPU;
#                            exits 1 when anything is off
#
# VOLTABUILD_REQUIRE_GPU=1 turns "no usable GPU" from a warning into an error.
#
# This file is the same in each GPU image's folder (every build context is its own folder);
# tests/images checks the copies stay identical. What differs per framework is probe.py.
set -euo pipefail

PROBE=${VOLTABUILD_PROBE:-/usr/local/lib/voltabuild/probe.py}
PYTHON=${VOLTABUILD_PYTHON:-python}
SMI_TIMEOUT=${VOLTABUILD_NVIDIA_SMI_TIMEOUT:-30}  # seconds; a wedged driver can hang nvidia-smi

log() { printf '%s entrypoint: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

PROBLEMS=()
problem() { PROBLEMS+=("$*"); }

# Logs the driver and the GPUs nvidia-smi lists; records a problem when it lists none.
# Sets GPU_COUNT.
report_gpus() {
  GPU_COUNT=0
  local out line rc=0
  local -a lines
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    problem "nvidia-smi is not in the container, so no NVIDIA driver was mounted into it"
    return
  fi
  out=$(timeout "$SMI_TIMEOUT" nvidia-smi --query-gpu=index,name,memory.total,driver_version \
    --format=csv,noheader 2>&1) || rc=$?
  if ((rc == 124)); then
    problem "nvidia-smi did not answer within ${SMI_TIMEOUT} s: the driver may be wedged"
    return
  elif ((rc != 0)); then
    problem "nvidia-smi failed: ${out//$'\n'/ }"
    return
  fi
  if [[ -z $out ]]; then
    problem "nvidia-smi lists no GPU"
    return
  fi
  mapfile -t lines <<<"$out"
  GPU_COUNT=${#lines[@]}
  log "NVIDIA driver ${lines[0]##*, }, ${GPU_COUNT} GPU(s):"
  for line in "${lines[@]}"; do
    log "  GPU ${line%, *}"
  done
}

# Asks the framework how many CUDA devices it can use ("<count> <description>" from probe.py).
# Sets FW_DEVICES.
report_framework() {
  FW_DEVICES=0
  local out
  if ! out=$("$PYTHON" "$PROBE" devices); then
    problem "the framework probe failed (${PYTHON} ${PROBE} devices)"
    return
  fi
  if [[ ! $out =~ ^([0-9]+)\ (.*)$ ]]; then
    problem "the framework probe printed something unexpected: ${out}"
    return
  fi
  FW_DEVICES=${BASH_REMATCH[1]}
  log "${BASH_REMATCH[2]}: sees ${FW_DEVICES} CUDA device(s)"
  if (( FW_DEVICES == 0 && GPU_COUNT > 0 )); then
    problem "the framework sees no CUDA device although nvidia-smi lists ${GPU_COUNT};" \
      "the driver may be older than this image's CUDA ${CUDA_VERSION:-} needs"
  elif (( FW_DEVICES == 0 )); then
    problem "the framework sees no CUDA device"
  fi
}

report() {
  report_gpus
  report_framework
}

warn_no_gpu() {
  local p
  for p in "${PROBLEMS[@]}"; do log "WARNING: ${p}"; done
  log "WARNING: no usable GPU, continuing on the CPU. Run the container with the GPUs attached:" \
    "'docker run --gpus all ...' (the host needs the NVIDIA driver and the NVIDIA Container Toolkit)." \
    "Set VOLTABUILD_REQUIRE_GPU=1 to stop instead."
}

# --check: everything must be right, and a small matrix multiply must run on the GPU.
check() {
  report
  if (( FW_DEVICES > 0 )); then
    local result
    if result=$("$PYTHON" "$PROBE" matmul); then
      log "$result"
    else
      problem "the matrix multiply on the GPU failed"
    fi
  fi
  if (( ${#PROBLEMS[@]} > 0 )); then
    local p
    for p in "${PROBLEMS[@]}"; do log "FAIL: ${p}"; done
    die "smoke test failed; on a GPU host run it with 'docker run --gpus all IMAGE --check'"
  fi
  log "smoke test passed"
}

start() {
  report
  if (( ${#PROBLEMS[@]} > 0 )); then
    if [[ ${VOLTABUILD_REQUIRE_GPU:-0} == 1 ]]; then
      local p
      for p in "${PROBLEMS[@]}"; do log "${p}"; done
      die "VOLTABUILD_REQUIRE_GPU=1 and no usable GPU: run the container with '--gpus all'"
    fi
    warn_no_gpu
  fi
  (( $# > 0 )) || set -- bash
  exec "$@"
}

main() {
  # `docker run IMAGE /usr/local/bin/entrypoint.sh --check` (the buildspec's smoke test given as
  # the command) arrives with this script as $1: run the check once, not a start and then a check.
  if [[ ${1:-} == "$0" && ${2:-} == --check ]]; then shift; fi
  if [[ ${1:-} == --check ]]; then
    check
  else
    start "$@"
  fi
}

main "$@"
