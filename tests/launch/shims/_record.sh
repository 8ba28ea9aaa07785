# shellcheck shell=bash
# sourced by every shim: append this call (name, args) to $SHIM_CALLS, \x1f between
# fields and \x1e after each call, so arguments with newlines survive. One write per
# call: the host script runs shims concurrently (the log shipper in the background), and
# separate writes from two shims would interleave.
shim_record() {
  local name=${0##*/} record
  record=$(printf '%s' "$name"; printf '\037%s' "$@"; printf '\036')
  printf '%s' "$record" >>"${SHIM_CALLS:?}"
}
shim_record "$@"

# SHIM_FAIL=STEP fails that step every time; SHIM_FAIL_ONCE=STEP only the first time.
fail() {
  [[ ${SHIM_FAIL:-} == "$1" ]] && return 0
  if [[ ${SHIM_FAIL_ONCE:-} == "$1" && ! -e "$SHIM_CALLS.$1-failed" ]]; then
    : >"$SHIM_CALLS.$1-failed"
    return 0
  fi
  return 1
}
