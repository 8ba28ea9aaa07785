#!/usr/bin/env bash
# Installs PyTorch, torchvision and torchaudio into the active virtual environment, the Dockerfile's
# way. Settings come from the environment (the Dockerfile's build args):
#
#   install-torch.sh            in the image: BUILD_MODE=wheels installs the official CUDA wheels
#                               from download.pytorch.org/whl/cu<CUDA>; BUILD_MODE=source installs
#                               the wheels the compile stage made (WHEEL_DIR) and checks that every
#                               library they load is in the image
#   install-torch.sh compile    the compile stage of a source build (on cudnn-devel): compiles the
#                               release tags for TORCH_CUDA_ARCH_LIST, with MAGMA (PyTorch's
#                               prebuilt tarball) and the system NCCL, MAX_JOBS at a time, into
#                               wheels in WHEEL_DIR, and copies the CUDA, cuDNN and NCCL shared
#                               libraries they load into CUDA_LIBS_DIR (the image has no toolkit)
#
# PYTORCH_VERSION, TORCHVISION_VERSION, TORCHAUDIO_VERSION, CUDA_VERSION (12.4 or 12.4.1) are required.
# TORCHVISION_FROM / TORCHAUDIO_FROM (default cuda): `cuda` takes the package from the index of the
# build's CUDA (or, in source mode, compiles it); `pypi` installs PyPI's CUDA-independent py3 wheel
# after torch (torchaudio 2.11.1 serves every torch from 2.11 on; torchvision 0.29.2 every torch
# from 2.14 on), keeping the installed torch.
# LOCK_PINNED (optional): the lock's "pinned, not hashed" lines (lock-pinned.txt in the build
# context, "name==version index" each). In wheels mode they must be exactly what this installs
# (same versions, same indexes): a stale lock or build args that differ from it fail the build.
set -euo pipefail

WHEEL_INDEX=${WHEEL_INDEX:-https://download.pytorch.org/whl}
PYPI_INDEX=${PYPI_INDEX:-https://pypi.org/simple}
MAGMA_URL=${MAGMA_URL:-https://ossci-linux.s3.us-east-1.amazonaws.com}
MAGMA_VERSION=${MAGMA_VERSION:-2.6.1}
SRC_DIR=${SRC_DIR:-/tmp/voltabuild-src}

log() { printf '%s install-torch: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

require() {
  local name
  for name in "$@"; do
    [[ -n ${!name:-} ]] || die "$name is not set"
  done
}

# "12.4.1" or "12.4" -> "124"
cuda_nodot() {
  local major minor
  IFS=. read -r major minor _ <<<"$CUDA_VERSION"
  [[ $major =~ ^[0-9]+$ && $minor =~ ^[0-9]+$ ]] || die "CUDA_VERSION=$CUDA_VERSION is not MAJOR.MINOR[.PATCH]"
  printf '%s%s\n' "$major" "$minor"
}

# Where a companion package comes from: "cuda" or "pypi".
from_of() {
  local name=$1 value=${!1:-cuda}
  [[ $value == cuda || $value == pypi ]] || die "${name}=${value} is not one of: cuda, pypi"
  printf '%s\n' "$value"
}

# The companions (torchvision, torchaudio) whose *_FROM is $1, as requirement strings.
companions_from() {
  local want=$1 out=()
  [[ $(from_of TORCHVISION_FROM) == "$want" ]] && out+=("torchvision==${TORCHVISION_VERSION}")
  [[ $(from_of TORCHAUDIO_FROM) == "$want" ]] && out+=("torchaudio==${TORCHAUDIO_VERSION}")
  ((${#out[@]} == 0)) || printf '%s\n' "${out[@]}"
}

# PyPI's py3 companions, after torch: uv keeps the installed torch, which satisfies them.
install_pypi_companions() {
  local pkgs=()
  mapfile -t pkgs < <(companions_from pypi)
  ((${#pkgs[@]} > 0)) || return 0
  log "installing ${pkgs[*]} from PyPI (CUDA-independent wheels)"
  local cmd=(uv pip install "${pkgs[@]}")
  "${cmd[@]}"
}

# What wheels mode installs, as the lock's pinned lines ("name==version index").
wheel_pins() {
  local index pkg
  index="${WHEEL_INDEX}/cu$(cuda_nodot)"
  printf 'torch==%s %s\n' "$PYTORCH_VERSION" "$index"
  while read -r pkg; do
    [[ -n $pkg ]] && printf '%s %s\n' "$pkg" "$index"
  done < <(companions_from cuda)
  while read -r pkg; do
    [[ -n $pkg ]] && printf '%s %s\n' "$pkg" "$PYPI_INDEX"
  done < <(companions_from pypi)
}

check_pins() {
  [[ -n ${LOCK_PINNED:-} ]] || return 0
  [[ -f $LOCK_PINNED ]] || die "LOCK_PINNED=$LOCK_PINNED does not exist"
  local want have
  want=$(wheel_pins | sort)
  have=$(grep -v '^[[:space:]]*$' "$LOCK_PINNED" | sort || true)
  [[ $have == "$want" ]] ||
    die "the lock pins '$(tr '\n' ';' <<<"$have")' but this build installs '$(tr '\n' ';' <<<"$want")': run make lock for this combination"
  log "the lock's pinned lines match: $(tr '\n' ';' <<<"$want")"
}

install_wheels() {
  check_pins
  local index pkgs=()
  index="${WHEEL_INDEX}/cu$(cuda_nodot)"
  mapfile -t pkgs < <(companions_from cuda)
  log "installing torch ${PYTORCH_VERSION} ${pkgs[*]} from ${index}"
  local cmd=(uv pip install --index-url "$index" "torch==${PYTORCH_VERSION}" "${pkgs[@]}")
  "${cmd[@]}"
  install_pypi_companions
}

# Keeps the architectures of TORCH_CUDA_ARCH_LIST this nvcc can compile for (CUDA 13 dropped
# Volta, for one) and prints them; dies when none is left.
supported_arch_list() {
  local supported arch cc kept=() dropped=()
  supported=$(nvcc --list-gpu-arch) || die "nvcc --list-gpu-arch failed: is this a CUDA devel image?"
  for arch in $TORCH_CUDA_ARCH_LIST; do
    cc=${arch%+PTX}
    if grep -qx "compute_${cc//./}" <<<"$supported"; then
      kept+=("$arch")
    else
      dropped+=("$arch")
    fi
  done
  ((${#dropped[@]} == 0)) || log "WARNING: nvcc for CUDA ${CUDA_VERSION} cannot build for ${dropped[*]}; leaving them out"
  ((${#kept[@]} > 0)) || die "none of TORCH_CUDA_ARCH_LIST='${TORCH_CUDA_ARCH_LIST}' is supported by this CUDA"
  printf '%s\n' "${kept[*]}"
}

clone() {
  local repo=$1 tag=$2 dest=$3
  log "cloning ${repo} ${tag}"
  local cmd=(git clone --quiet --depth 1 --branch "$tag" --recurse-submodules --shallow-submodules
    "https://github.com/pytorch/${repo}.git" "$dest")
  "${cmd[@]}"
}

install_magma() {
  local archive
  archive="magma-cuda$(cuda_nodot)-${MAGMA_VERSION}-1.tar.bz2"
  log "installing MAGMA ${MAGMA_VERSION} for CUDA ${CUDA_VERSION} (${archive})"
  mkdir -p "${SRC_DIR}/magma"
  curl -fsSL --retry 3 "${MAGMA_URL}/${archive}" -o "${SRC_DIR}/${archive}" \
    || die "no MAGMA build ${archive} at ${MAGMA_URL} for this CUDA"
  tar -xjf "${SRC_DIR}/${archive}" -C "${SRC_DIR}/magma"
}

# The shared libraries the compiled extensions load from the CUDA toolkit, cuDNN and NCCL (not
# the driver's libcuda, which the NVIDIA Container Toolkit mounts at run time), each with its
# family (cuDNN and nvrtc load siblings at run time: libcudnn_*.so.*, libnvrtc-builtins), links
# kept, into CUDA_LIBS_DIR.
collect_cuda_libs() {
  local site lib dir stem libs=() copied=()
  site=${SITE_PACKAGES:-$(python -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')}
  mkdir -p "$CUDA_LIBS_DIR"
  mapfile -t libs < <(find "$site/torch" "$site/torchvision" "$site/torchaudio" -name '*.so*' -type f 2>/dev/null \
    | sort | xargs -r ldd 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | sort -u \
    | grep -E '/lib(cu|nv|nccl)[^/]*$' | grep -vE '/(libcuda\.so|libnvidia-)[^/]*$' || true)
  ((${#libs[@]} > 0)) || die "the compiled torch loads no CUDA library: was it built with USE_CUDA=1?"
  for lib in "${libs[@]}"; do
    dir=$(dirname "$lib")
    stem=$(basename "$lib")
    stem=${stem%%.so*}
    cp -a "$dir/$stem"*.so* "$CUDA_LIBS_DIR/"
    copied+=("$stem")
  done
  log "copied the CUDA libraries the build loads (with their families): ${copied[*]}"
}

# Source mode, in the compile stage: wheels into WHEEL_DIR, their CUDA libraries into CUDA_LIBS_DIR.
compile_source() {
  require TORCH_CUDA_ARCH_LIST MAX_JOBS WHEEL_DIR CUDA_LIBS_DIR
  local arch_list
  arch_list=$(supported_arch_list)
  mkdir -p "$SRC_DIR" "$WHEEL_DIR"
  install_magma
  clone pytorch "v${PYTORCH_VERSION}" "${SRC_DIR}/pytorch"
  uv pip install -r "${SRC_DIR}/pytorch/requirements.txt" cmake ninja mkl-static mkl-include

  export TORCH_CUDA_ARCH_LIST=$arch_list MAX_JOBS
  export USE_CUDA=1 USE_CUDNN=1 USE_NCCL=1 USE_SYSTEM_NCCL=1 BUILD_TEST=0
  export MAGMA_HOME="${SRC_DIR}/magma" CMAKE_PREFIX_PATH="${VIRTUAL_ENV:?}:${SRC_DIR}/magma"
  export TORCH_NVCC_FLAGS="-Xfatbin -compress-all"
  export PYTORCH_BUILD_VERSION=$PYTORCH_VERSION PYTORCH_BUILD_NUMBER=1
  log "compiling torch ${PYTORCH_VERSION} for '${TORCH_CUDA_ARCH_LIST}' with ${MAX_JOBS} jobs"
  (cd "${SRC_DIR}/pytorch" && python -m pip wheel --no-cache-dir --no-build-isolation --no-deps -w "$WHEEL_DIR" .)
  # torchvision and torchaudio compile against it
  uv pip install --no-deps "$WHEEL_DIR"/torch-*.whl

  if [[ $(from_of TORCHVISION_FROM) == cuda ]]; then
    clone vision "v${TORCHVISION_VERSION}" "${SRC_DIR}/vision"
    log "compiling torchvision ${TORCHVISION_VERSION}"
    (cd "${SRC_DIR}/vision" && FORCE_CUDA=1 BUILD_VERSION=$TORCHVISION_VERSION \
      python -m pip wheel --no-cache-dir --no-build-isolation --no-deps -w "$WHEEL_DIR" .)
    uv pip install --no-deps "$WHEEL_DIR"/torchvision-*.whl
  fi

  if [[ $(from_of TORCHAUDIO_FROM) == cuda ]]; then
    clone audio "v${TORCHAUDIO_VERSION}" "${SRC_DIR}/audio"
    log "compiling torchaudio ${TORCHAUDIO_VERSION}"
    (cd "${SRC_DIR}/audio" && BUILD_VERSION=$TORCHAUDIO_VERSION \
      python -m pip wheel --no-cache-dir --no-build-isolation --no-deps -w "$WHEEL_DIR" .)
    uv pip install --no-deps "$WHEEL_DIR"/torchaudio-*.whl
  fi

  collect_cuda_libs
  rm -rf "$SRC_DIR"
}

# Fails the build naming each library the installed extensions load and the image lacks (the
# driver's libcuda aside: it comes with the GPU at run time).
check_linked() {
  local site missing
  site=${SITE_PACKAGES:-$(python -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')}
  missing=$(find "$site/torch" "$site/torchvision" "$site/torchaudio" -name '*.so*' -type f 2>/dev/null \
    | sort | xargs -r ldd 2>/dev/null | awk '$2 == "=>" && $3 == "not" { print $1 }' \
    | grep -vE '^(libcuda\.so|libnvidia-)' | sort -u | tr '\n' ' ' || true)
  [[ -z $missing ]] || die "the compiled torch loads libraries this image does not have: ${missing% }"
}

# Source mode, in the image: the compile stage's wheels (and their dependencies from PyPI).
install_compiled() {
  require WHEEL_DIR
  local wheels=()
  mapfile -t wheels < <(find "$WHEEL_DIR" -maxdepth 1 -name '*.whl' | sort)
  ((${#wheels[@]} > 0)) || die "no compiled wheels in ${WHEEL_DIR}: the compile stage did not run"
  log "installing the compiled ${wheels[*]##*/}"
  uv pip install "${wheels[@]}"
  install_pypi_companions
  check_linked
}

# Fails the build when what got installed is not what was asked for.
verify() {
  local want_cuda
  want_cuda=$(cuda_nodot)
  python - "$PYTORCH_VERSION" "$want_cuda" <<'PY'
import sys
import torch, torchvision, torchaudio
want, want_cuda = sys.argv[1], sys.argv[2]
got = torch.__version__.split("+")[0]
got_cuda = (torch.version.cuda or "").replace(".", "")
if got != want or not got_cuda.startswith(want_cuda):
    sys.exit(f"installed torch {torch.__version__} (CUDA {torch.version.cuda}), wanted {want} for CUDA {want_cuda}")
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), torchvision {torchvision.__version__}, "
      f"torchaudio {torchaudio.__version__}", file=sys.stderr)
PY
}

main() {
  require PYTORCH_VERSION TORCHVISION_VERSION TORCHAUDIO_VERSION CUDA_VERSION
  from_of TORCHVISION_FROM >/dev/null
  from_of TORCHAUDIO_FROM >/dev/null
  if [[ ${1:-} == compile ]]; then
    compile_source
    return
  fi
  [[ -z ${1:-} ]] || die "unknown command '$1' (none, or compile)"
  case ${BUILD_MODE:-wheels} in
    wheels) install_wheels ;;
    source) install_compiled ;;
    *) die "BUILD_MODE=${BUILD_MODE} is not one of: wheels, source" ;;
  esac
  verify
}

main "$@"
