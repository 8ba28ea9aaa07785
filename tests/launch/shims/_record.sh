# sourced by every shim: append this call (name, args) to $SHIM_CALLS, \x1f between
# fields and \x1e after each call, so arguments with newlines survive.
shim_record() {
  local name=${0##*/}
  { printf '%s' "$name"; printf '\037%s' "$@"; printf '\036'; } >>"${SHIM_CALLS:?}"
}
shim_record "$@"
