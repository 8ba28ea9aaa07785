"""dockerfiles/pytorch/install-torch.sh with shimmed uv, git, curl, tar, nvcc, ldd and python: the
wheels come from the index of the requested CUDA; a source build's compile stage makes wheels for
what the CUDA's nvcc supports, with MAGMA and the system NCCL, and gathers only the CUDA libraries
they load; the image installs those wheels and fails naming any library it lacks."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "dockerfiles" / "pytorch" / "install-torch.sh"
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

# Every shim appends {"cmd": ..., "argv": [...], "env": {...}} to $FAKE_LOG.
RECORD = """#!/usr/bin/env bash
python3 - "$(basename "$0")" "$@" <<'PY' >>"$FAKE_LOG"
import json, os, sys
keys = ("TORCH_CUDA_ARCH_LIST", "MAX_JOBS", "USE_SYSTEM_NCCL", "MAGMA_HOME", "PYTORCH_BUILD_VERSION",
        "FORCE_CUDA", "BUILD_VERSION")
print(json.dumps({"cmd": sys.argv[1], "argv": sys.argv[2:], "env": {k: os.environ[k] for k in keys if k in os.environ}}))
PY
"""
SHIMS = {
    "uv": RECORD,
    "curl": RECORD + '[[ ${FAKE_CURL:-ok} == ok ]] || exit 22\n',
    "tar": RECORD,
    # git clone ... DEST: make DEST so the script can cd into it
    "git": RECORD + 'mkdir -p "${@: -1}"\n',
    "nvcc": RECORD + 'printf "compute_%s\\n" ${FAKE_ARCHS:-50 52 60 61 70 75 80 86 89 90}\n',
    # `python - VERSION CUDA` is the verification step; `python -m pip wheel ...` a source compile
    "python": RECORD + 'if [[ $1 == - ]]; then cat >/dev/null; [[ ${FAKE_VERIFY:-ok} == ok ]] || exit 1; fi\n',
    # what the dynamic linker would load for the files given: $FAKE_LDD, once per call
    "ldd": RECORD + 'printf "%b" "${FAKE_LDD:-}"\n',
}

BASE_ENV = {
    "PYTORCH_VERSION": "2.5.1",
    "TORCHVISION_VERSION": "0.20.1",
    "TORCHAUDIO_VERSION": "2.5.1",
    "CUDA_VERSION": "12.4.1",  # what the nvidia/cuda base image's ENV says
    "TORCH_CUDA_ARCH_LIST": "7.0+PTX 7.5 8.0 8.6 8.9 9.0",
    "MAX_JOBS": "8",
    "VIRTUAL_ENV": "/opt/venv",
}


@pytest.fixture
def install(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in SHIMS.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "calls.jsonl"

    def run(*args: str, **env: str):
        log.write_text("")
        environ = {"PATH": f"{bin_dir}:{SYSTEM_PATH}", "FAKE_LOG": str(log), "SRC_DIR": str(tmp_path / "src"),
                   "WHEEL_DIR": str(tmp_path / "wheels"), "CUDA_LIBS_DIR": str(tmp_path / "cuda-libs"),
                   "SITE_PACKAGES": str(tmp_path / "site"), **BASE_ENV, **env}
        result = subprocess.run(["bash", str(SCRIPT), *args], env=environ, capture_output=True, text=True, timeout=30)
        calls = [json.loads(line) for line in log.read_text().splitlines()]
        return result, calls

    return run


def test_wheels_come_from_the_index_of_the_requested_cuda(install):
    result, calls = install(BUILD_MODE="wheels")
    assert result.returncode == 0, result.stderr
    uv = [c["argv"] for c in calls if c["cmd"] == "uv"]
    assert uv == [["pip", "install", "--index-url", "https://download.pytorch.org/whl/cu124",
                   "torch==2.5.1", "torchvision==0.20.1", "torchaudio==2.5.1"]]
    # then the install is verified against the requested version and CUDA
    assert calls[-1]["cmd"] == "python" and calls[-1]["argv"] == ["-", "2.5.1", "124"]
    assert not [c for c in calls if c["cmd"] in {"git", "nvcc", "curl"}]


def test_cuda_13_wheels(install):
    result, calls = install(BUILD_MODE="wheels", CUDA_VERSION="13.0", PYTORCH_VERSION="2.9.1",
                            TORCHVISION_VERSION="0.24.1", TORCHAUDIO_VERSION="2.9.1")
    assert result.returncode == 0, result.stderr
    assert "https://download.pytorch.org/whl/cu130" in calls[0]["argv"]


def test_a_failed_verification_fails_the_build(install):
    result, _ = install(BUILD_MODE="wheels", FAKE_VERIFY="fail")
    assert result.returncode != 0


@pytest.fixture
def built(tmp_path):
    """What a compile leaves: torch's extension in site-packages and, in a CUDA folder, the
    libraries ldd says it loads, their siblings, and some it does not load."""
    lib = tmp_path / "site" / "torch" / "lib"
    lib.mkdir(parents=True)
    (lib / "libtorch_cuda.so").write_bytes(b"ELF")
    cuda = tmp_path / "cuda"
    cuda.mkdir()
    for name in ("libcudnn.so.9.5.1", "libcudnn_ops.so.9.5.1", "libcudnn_static.a", "libcublas.so.12.6.4",
                 "libcublasLt.so.12.6.4", "libcufft.so.11.3.0", "libnccl.so.2.23.4"):
        (cuda / name).write_bytes(b"ELF")
    (cuda / "libcudnn.so.9").symlink_to("libcudnn.so.9.5.1")
    (cuda / "libcudnn_ops.so.9").symlink_to("libcudnn_ops.so.9.5.1")
    (cuda / "libcublas.so.12").symlink_to("libcublas.so.12.6.4")
    (cuda / "libcublasLt.so.12").symlink_to("libcublasLt.so.12.6.4")
    (cuda / "libnccl.so.2").symlink_to("libnccl.so.2.23.4")
    ldd = "".join(f"\t{name} => {cuda}/{name} (0x00007f0000000000)\n"
                  for name in ("libcudnn.so.9", "libcublas.so.12", "libcublasLt.so.12", "libnccl.so.2"))
    ldd += "\tlibcuda.so.1 => not found\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0000000000)\n"
    return {"FAKE_LDD": ldd}


def test_source_compile_makes_wheels_for_the_arch_list_with_magma_and_system_nccl(install, built, tmp_path):
    result, calls = install("compile", TORCH_CUDA_ARCH_LIST="7.0+PTX 8.0", MAX_JOBS="4", **built)
    assert result.returncode == 0, result.stderr
    (curl,) = [c for c in calls if c["cmd"] == "curl"]
    assert any(a.endswith("/magma-cuda124-2.6.1-1.tar.bz2") for a in curl["argv"])
    clones = [c["argv"] for c in calls if c["cmd"] == "git"]
    assert [(a[a.index("--branch") + 1], a[-2]) for a in clones] == [
        ("v2.5.1", "https://github.com/pytorch/pytorch.git"),
        ("v0.20.1", "https://github.com/pytorch/vision.git"),
        ("v2.5.1", "https://github.com/pytorch/audio.git"),
    ]
    # each one a wheel into WHEEL_DIR (the image installs them; this stage is thrown away)
    builds = [c for c in calls if c["cmd"] == "python" and c["argv"][:3] == ["-m", "pip", "wheel"]]
    assert len(builds) == 3
    assert all(b["argv"][b["argv"].index("-w") + 1] == str(tmp_path / "wheels") for b in builds)
    torch_env = builds[0]["env"]
    assert torch_env["TORCH_CUDA_ARCH_LIST"] == "7.0+PTX 8.0"
    assert torch_env["MAX_JOBS"] == "4"
    assert torch_env["USE_SYSTEM_NCCL"] == "1"
    assert torch_env["MAGMA_HOME"].endswith("/magma")
    assert torch_env["PYTORCH_BUILD_VERSION"] == "2.5.1"
    assert builds[1]["env"]["FORCE_CUDA"] == "1" and builds[1]["env"]["BUILD_VERSION"] == "0.20.1"
    # torchvision compiles against the torch just built
    uv = [c["argv"] for c in calls if c["cmd"] == "uv"]
    assert ["pip", "install", "--no-deps", f"{tmp_path}/wheels/torch-*.whl"] in uv
    assert not [c for c in calls if c["cmd"] == "python" and c["argv"][:1] == ["-"]], "verified in the image"


def test_source_compile_copies_only_the_cuda_libraries_the_build_loads(install, built, tmp_path):
    result, _ = install("compile", **built)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "cuda-libs"
    # cuDNN's, cuBLAS's and NCCL's shared libraries with their siblings and links; not cuFFT
    # (not loaded), not static archives, not the driver's libcuda, not libc
    assert sorted(p.name for p in out.iterdir()) == [
        "libcublas.so.12", "libcublas.so.12.6.4", "libcublasLt.so.12", "libcublasLt.so.12.6.4",
        "libcudnn.so.9", "libcudnn.so.9.5.1", "libcudnn_ops.so.9", "libcudnn_ops.so.9.5.1",
        "libnccl.so.2", "libnccl.so.2.23.4"]
    assert (out / "libcudnn.so.9").is_symlink()
    assert "copied the CUDA libraries the build loads (with their families): libcublas libcublasLt libcudnn libnccl" \
        in result.stderr


def test_a_compile_that_loads_no_cuda_library_fails(install, built):
    result, _ = install("compile", FAKE_LDD="\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x0)\n")
    assert result.returncode == 1
    assert "the compiled torch loads no CUDA library" in result.stderr


def test_the_image_installs_the_compiled_wheels_and_needs_no_compiler(install, built, tmp_path):
    # GIVEN the compile stage's wheels, and every library they load present (libcuda comes at run time)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name in ("torch-2.5.1-cp312-cp312-linux_x86_64.whl", "torchvision-0.20.1-cp312-cp312-linux_x86_64.whl"):
        (wheels / name).write_bytes(b"PK")
    result, calls = install(BUILD_MODE="source", FAKE_LDD="\tlibcuda.so.1 => not found\n")
    assert result.returncode == 0, result.stderr
    uv = [c["argv"] for c in calls if c["cmd"] == "uv"]
    assert uv == [["pip", "install", f"{wheels}/torch-2.5.1-cp312-cp312-linux_x86_64.whl",
                   f"{wheels}/torchvision-0.20.1-cp312-cp312-linux_x86_64.whl"]]
    assert not [c for c in calls if c["cmd"] in {"git", "curl", "nvcc"}]
    assert calls[-1]["argv"] == ["-", "2.5.1", "124"]


def test_the_image_fails_naming_a_library_the_compiled_torch_loads_and_it_lacks(install, built, tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "torch-2.5.1-cp312-cp312-linux_x86_64.whl").write_bytes(b"PK")
    result, _ = install(BUILD_MODE="source", FAKE_LDD="\tlibcudnn_cnn.so.9 => not found\n\tlibcuda.so.1 => not found\n")
    assert result.returncode == 1
    assert "the compiled torch loads libraries this image does not have: libcudnn_cnn.so.9" in result.stderr


def test_the_image_without_compiled_wheels_is_a_clear_error(install):
    result, calls = install(BUILD_MODE="source")
    assert result.returncode == 1
    assert "no compiled wheels in" in result.stderr and "the compile stage did not run" in result.stderr
    assert not [c for c in calls if c["cmd"] == "uv"]


def test_source_compile_leaves_out_archs_the_cuda_cannot_compile(install, built):
    # CUDA 13's nvcc has no Volta (7.0) any more
    result, calls = install("compile", CUDA_VERSION="13.0.1", FAKE_ARCHS="75 80 86 89 90 100 120", **built)
    assert result.returncode == 0, result.stderr
    assert "cannot build for 7.0+PTX; leaving them out" in result.stderr
    build = next(c for c in calls if c["cmd"] == "python" and c["argv"][:2] == ["-m", "pip"])
    assert build["env"]["TORCH_CUDA_ARCH_LIST"] == "7.5 8.0 8.6 8.9 9.0"


def test_source_compile_with_no_supported_arch_stops_before_cloning(install):
    result, calls = install("compile", TORCH_CUDA_ARCH_LIST="7.0+PTX", FAKE_ARCHS="75 80")
    assert result.returncode == 1
    assert "none of TORCH_CUDA_ARCH_LIST='7.0+PTX' is supported" in result.stderr
    assert not [c for c in calls if c["cmd"] in {"git", "curl"}]


def test_missing_magma_build_is_a_clear_error(install):
    result, _ = install("compile", FAKE_CURL="fail")
    assert result.returncode == 1
    assert "no MAGMA build magma-cuda124-2.6.1-1.tar.bz2" in result.stderr


def test_an_unknown_command_is_refused(install):
    result, calls = install("build")
    assert result.returncode == 1
    assert "unknown command 'build' (none, or compile)" in result.stderr
    assert calls == []


@pytest.mark.parametrize("missing", ["PYTORCH_VERSION", "CUDA_VERSION"])
def test_required_settings(install, missing):
    result, calls = install(**{missing: ""})
    assert result.returncode == 1
    assert f"{missing} is not set" in result.stderr
    assert calls == []


def test_unknown_build_mode(install):
    result, _ = install(BUILD_MODE="conda")
    assert result.returncode == 1
    assert "BUILD_MODE=conda is not one of: wheels, source" in result.stderr


def test_pypi_companions_are_installed_from_pypi_after_torch(install):
    # torch 2.14+ : torchaudio 2.11.1 is a CUDA-independent py3 wheel on PyPI only
    result, calls = install(BUILD_MODE="wheels", CUDA_VERSION="12.6.3", PYTORCH_VERSION="2.14.1",
                            TORCHVISION_VERSION="0.29.1", TORCHAUDIO_VERSION="2.11.1", TORCHAUDIO_FROM="pypi")
    assert result.returncode == 0, result.stderr
    uv = [c["argv"] for c in calls if c["cmd"] == "uv"]
    assert uv == [
        ["pip", "install", "--index-url", "https://download.pytorch.org/whl/cu126", "torch==2.14.1",
         "torchvision==0.29.1"],
        ["pip", "install", "torchaudio==2.11.1"],
    ]
    assert calls[-1]["argv"] == ["-", "2.14.1", "126"]


def test_both_companions_from_pypi(install):
    result, calls = install(BUILD_MODE="wheels", CUDA_VERSION="13.2.1", PYTORCH_VERSION="2.15.0",
                            TORCHVISION_VERSION="0.29.2", TORCHVISION_FROM="pypi",
                            TORCHAUDIO_VERSION="2.11.1", TORCHAUDIO_FROM="pypi")
    assert result.returncode == 0, result.stderr
    uv = [c["argv"] for c in calls if c["cmd"] == "uv"]
    assert uv == [
        ["pip", "install", "--index-url", "https://download.pytorch.org/whl/cu132", "torch==2.15.0"],
        ["pip", "install", "torchvision==0.29.2", "torchaudio==2.11.1"],
    ]


def test_source_compile_leaves_pypi_companions_to_the_image(install, built, tmp_path):
    # GIVEN torchaudio from PyPI: the compile stage does not compile it, the image installs it
    result, calls = install("compile", TORCHAUDIO_VERSION="2.11.1", TORCHAUDIO_FROM="pypi", **built)
    assert result.returncode == 0, result.stderr
    clones = [c["argv"][-2] for c in calls if c["cmd"] == "git"]
    assert clones == ["https://github.com/pytorch/pytorch.git", "https://github.com/pytorch/vision.git"]
    wheels = tmp_path / "wheels"
    (wheels / "torch-2.5.1-cp312-cp312-linux_x86_64.whl").write_bytes(b"PK")
    result, calls = install(BUILD_MODE="source", TORCHAUDIO_VERSION="2.11.1", TORCHAUDIO_FROM="pypi")
    assert result.returncode == 0, result.stderr
    assert ["pip", "install", "torchaudio==2.11.1"] in [c["argv"] for c in calls if c["cmd"] == "uv"]


def test_unknown_companion_source(install):
    result, calls = install(TORCHAUDIO_FROM="conda")
    assert result.returncode == 1
    assert "TORCHAUDIO_FROM=conda is not one of: cuda, pypi" in result.stderr
    assert calls == []


def _default_lock_pins() -> tuple[dict[str, str], bytes]:
    """The default PyTorch combination's build args and its lock's pinned lines, as the
    renderer puts them in the context (chalicelib/launching/catalog_contexts.py)."""
    from chalicelib.launching.catalog_contexts import lock_files, lock_path
    from chalicelib.specs.catalog import load_catalog

    catalog = load_catalog(ROOT)
    spec = catalog.spec("pytorch")
    r = spec.resolve(None, None, None)
    args = spec.docker_build_args(r, catalog.hardware, {})
    env = {k: args[k] for k in ("PYTORCH_VERSION", "TORCHVISION_VERSION", "TORCHAUDIO_VERSION",
                                "TORCHVISION_FROM", "TORCHAUDIO_FROM")}
    env["CUDA_VERSION"] = r.cuda
    return env, lock_files(lock_path(catalog, r).read_text())["lock-pinned.txt"]


def test_the_locks_pinned_lines_are_what_wheels_mode_installs(install, tmp_path):
    # GIVEN the default combination's build args and its lock's pinned lines
    env, pinned = _default_lock_pins()
    lock = tmp_path / "lock-pinned.txt"
    lock.write_bytes(pinned)
    # WHEN install-torch.sh runs in wheels mode with the lock THEN it agrees and installs them
    result, calls = install(BUILD_MODE="wheels", LOCK_PINNED=str(lock), **env)
    assert result.returncode == 0, result.stderr
    uv = [c["argv"] for c in calls if c["cmd"] == "uv"]
    index = pinned.decode().splitlines()[0].split()[1]
    assert uv[0][:4] == ["pip", "install", "--index-url", index] and f"torch=={env['PYTORCH_VERSION']}" in uv[0]


def test_a_lock_that_pins_other_versions_stops_the_build_before_any_install(install, tmp_path):
    env, pinned = _default_lock_pins()
    lock = tmp_path / "lock-pinned.txt"
    lock.write_bytes(pinned.replace(f"torch=={env['PYTORCH_VERSION']} ".encode(), b"torch==2.0.0 "))
    result, calls = install(BUILD_MODE="wheels", LOCK_PINNED=str(lock), **env)
    assert result.returncode != 0
    assert "the lock pins" in result.stderr and "run make lock" in result.stderr
    assert not [c for c in calls if c["cmd"] == "uv"]
