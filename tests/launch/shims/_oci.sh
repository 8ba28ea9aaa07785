# shellcheck shell=bash
# sourced by the docker and buildah shims: a stand-in OCI image layout in $1 whose manifest
# declares layers of SHIM_LAYER_SIZES bytes (default "1000 2000"); its config labels the base
# SHIM_BASE_NAME, and with SHIM_BASE_DIGEST its manifest carries buildah's base annotation.
oci_layout() {
  local dir=$1 manifest config layers="" size i=0 annotations=""
  manifest=sha256:$(printf '1%.0s' {1..64}) config=sha256:$(printf '2%.0s' {1..64})
  mkdir -p "$dir/blobs/sha256"
  for size in ${SHIM_LAYER_SIZES:-1000 2000}; do
    i=$((i + 1))
    layers+="${layers:+,}{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$(printf "%064d" "$i")\",\"size\":$size}"
  done
  [[ -n ${SHIM_BASE_DIGEST:-} ]] &&
    annotations=",\"annotations\":{\"org.opencontainers.image.base.digest\":\"$SHIM_BASE_DIGEST\"}"
  printf '{"config":{"Labels":{"org.opencontainers.image.base.name":"%s"}}}' \
    "${SHIM_BASE_NAME:-nvidia/cuda:12.6.3-base-ubuntu22.04}" >"$dir/blobs/sha256/${config#sha256:}"
  printf '{"schemaVersion":2,"config":{"digest":"%s","size":10},"layers":[%s]%s}' \
    "$config" "$layers" "$annotations" >"$dir/blobs/sha256/${manifest#sha256:}"
  printf '{"schemaVersion":2,"manifests":[{"digest":"%s","size":10}]}' "$manifest" >"$dir/index.json"
}
