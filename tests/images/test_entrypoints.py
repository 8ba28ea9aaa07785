"""The image entrypoints, run under bash/sh on this machine with shimmed `nvidia-smi` and `python`:
GPU present, absent, VOLTABUILD_REQUIRE_GPU=1, and the --check smoke test passing and failing."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GPU_ENTRYPOINTS = [ROOT / "dockerfiles" / "common" / "entrypoint.sh"]  # one script for every GPU image
CANARY = ROOT / "dockerfiles" / "canary" / "entrypoint.sh"
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

NVIDIA_SMI = """#!/usr/bin/env bash
case "${FAKE_SMI:-gpus}" in
  gpus) printf '%s\\n' '0, Tesla V100-SXM2-16GB, 16384 MiB, 550.54.15' '1, Tesla V100-SXM2-16GB, 16384 MiB, 550.54.15' ;;
  none) ;;
  hang) exec sleep 10 ;;
  broken) echo "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver." ; exit 9 ;;
esac
"""

# Stands in for `python probe.py devices|matmul`; records each call.
PYTHON = """#!/usr/bin/env bash
echo "$*" >>"$FAKE_LOG"
case "$2" in
  devices)
    case "${FAKE_DEVICES:-2}" in
      crash) echo "Traceback: ModuleNotFoundError: No module named 'torch'" >&2; exit 1 ;;
      garbage) echo "hello" ;;
      *) echo "${FAKE_DEVICES:-2} torch 2.5.1+cu124 (CUDA 12.4, cuDNN 90100)" ;;
    esac ;;
  matmul)
    if [[ ${FAKE_MATMUL:-ok} == ok ]]; then echo "matmul 1024x1024 on Tesla V100-SXM2-16GB: ok (max relative error 1.2e-07)"
    else echo "RuntimeError: CUDA error: no kernel image is available for execution on the device" >&2; exit 1; fi ;;
esac
"""

# A GPU-free machine must not have a real nvidia-smi on the system PATH for these tests.
pytestmark = pytest.mark.skipif(
    shutil.which("nvidia-smi", path=SYSTEM_PATH) is not None,
    reason="this machine has a real nvidia-smi on its PATH; the shims cannot hide it",
)


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    calls: list[str]


def _reachable_by_all(path: Path) -> bool:
    """Every folder from / down to ``path`` lets other users through (o+x)."""
    return all(p.stat().st_mode & 0o001 for p in (path, *path.parents))


@pytest.fixture
def tmp_path():
    """A scratch folder every user can reach: the canary tests drop root, and pytest's own
    folder is 0700, as is a private TMPDIR (CI may clone and run under one): then /tmp."""
    base = Path(tempfile.gettempdir())
    with tempfile.TemporaryDirectory(prefix="voltabuild-images-",
                                     dir=base if _reachable_by_all(base) else "/tmp") as name:
        path = Path(name)
        path.chmod(0o755)
        yield path


@pytest.fixture
def shims(tmp_path):
    """A bin folder with fake `python` and (unless removed) `nvidia-smi`, and a way to run a script."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("nvidia-smi", NVIDIA_SMI), ("python", PYTHON)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "calls.log"

    def run(script: Path, *args: str, gpu: bool = True, shell: str = "bash", wrap=(), **env: str) -> Run:
        if wrap:
            # another user runs it: a copy it can read (the checkout may sit in a 0700 folder)
            copy = tmp_path / "scripts" / script.parent.name / script.name
            copy.parent.mkdir(parents=True, exist_ok=True)
            for folder in (copy.parent, copy.parent.parent):
                folder.chmod(0o755)
            shutil.copy2(script, copy)
            copy.chmod(0o755)
            script = copy
        if not gpu:
            (bin_dir / "nvidia-smi").unlink(missing_ok=True)
        log.write_text("")
        environ = {
            "PATH": f"{bin_dir}:{SYSTEM_PATH}",
            "HOME": str(tmp_path),
            "FAKE_LOG": str(log),
            "CUDA_VERSION": "12.4.1",
            "TMPDIR": str(tmp_path),
            **env,
        }
        result = subprocess.run(
            [*wrap, shell, str(script), *args], env=environ, capture_output=True, text=True, timeout=30
        )
        return Run(result.returncode, result.stdout, result.stderr, log.read_text().splitlines())

    return run


@pytest.fixture(params=GPU_ENTRYPOINTS, ids=lambda p: p.parent.name)
def entrypoint(request):
    return request.param


# --- GPU images: start mode ---------------------------------------------------------------

def test_gpu_present_reports_driver_gpus_and_framework_then_runs_the_command(shims, entrypoint):
    run = shims(entrypoint, "echo", "the command ran")
    assert run.returncode == 0, run.stderr
    assert run.stdout == "the command ran\n"
    assert "NVIDIA driver 550.54.15, 2 GPU(s)" in run.stderr
    assert "GPU 1, Tesla V100-SXM2-16GB, 16384 MiB" in run.stderr
    assert "torch 2.5.1+cu124 (CUDA 12.4, cuDNN 90100): sees 2 CUDA device(s)" in run.stderr
    assert "WARNING" not in run.stderr
    assert [c.split()[-1] for c in run.calls] == ["devices"]  # no matmul at start


def test_gpu_absent_warns_how_to_attach_gpus_and_still_runs(shims, entrypoint):
    run = shims(entrypoint, "echo", "the command ran", gpu=False, FAKE_DEVICES="0")
    assert run.returncode == 0, run.stderr
    assert run.stdout == "the command ran\n"
    assert "nvidia-smi is not in the container" in run.stderr
    assert "--gpus all" in run.stderr
    assert "VOLTABUILD_REQUIRE_GPU=1" in run.stderr


def test_require_gpu_fails_instead_of_running_the_command(shims, entrypoint):
    run = shims(entrypoint, "echo", "the command ran", gpu=False, FAKE_DEVICES="0", VOLTABUILD_REQUIRE_GPU="1")
    assert run.returncode == 1
    assert run.stdout == ""
    assert "VOLTABUILD_REQUIRE_GPU=1 and no usable GPU" in run.stderr
    assert "--gpus all" in run.stderr


def test_require_gpu_with_a_gpu_runs_the_command(shims, entrypoint):
    run = shims(entrypoint, "echo", "ok", VOLTABUILD_REQUIRE_GPU="1")
    assert (run.returncode, run.stdout) == (0, "ok\n")


def test_driver_too_old_for_the_image_is_named(shims, entrypoint):
    # nvidia-smi sees the GPUs but the framework does not: the usual cause is an old driver
    run = shims(entrypoint, "true", FAKE_DEVICES="0")
    assert run.returncode == 0
    assert "sees no CUDA device although nvidia-smi lists 2" in run.stderr
    assert "CUDA 12.4.1" in run.stderr


def test_without_a_command_it_starts_a_shell(shims, entrypoint):
    run = shims(entrypoint)  # bash reads an empty stdin and exits 0
    assert run.returncode == 0, run.stderr


# --- GPU images: --check ------------------------------------------------------------------

def test_check_passes_with_gpu_and_runs_the_matmul(shims, entrypoint):
    run = shims(entrypoint, "--check")
    assert run.returncode == 0, run.stderr
    assert "matmul 1024x1024 on Tesla V100-SXM2-16GB: ok" in run.stderr
    assert "smoke test passed" in run.stderr
    assert [c.split()[-1] for c in run.calls] == ["devices", "matmul"]


def test_check_fails_without_gpu_and_skips_the_matmul(shims, entrypoint):
    run = shims(entrypoint, "--check", gpu=False, FAKE_DEVICES="0")
    assert run.returncode == 1
    assert "FAIL: nvidia-smi is not in the container" in run.stderr
    assert "FAIL: the framework sees no CUDA device" in run.stderr
    assert "smoke test failed" in run.stderr and "--gpus all" in run.stderr
    assert [c.split()[-1] for c in run.calls] == ["devices"]


def test_check_fails_when_the_matmul_fails(shims, entrypoint):
    run = shims(entrypoint, "--check", FAKE_MATMUL="fail")
    assert run.returncode == 1
    assert "no kernel image is available" in run.stderr  # the framework's own error is shown
    assert "FAIL: the matrix multiply on the GPU failed" in run.stderr


def test_check_fails_when_the_framework_cannot_be_imported(shims, entrypoint):
    run = shims(entrypoint, "--check", FAKE_DEVICES="crash")
    assert run.returncode == 1
    assert "No module named 'torch'" in run.stderr
    assert "FAIL: the framework probe failed" in run.stderr


def test_check_fails_on_unexpected_probe_output(shims, entrypoint):
    run = shims(entrypoint, "--check", FAKE_DEVICES="garbage")
    assert run.returncode == 1
    assert "printed something unexpected: hello" in run.stderr


def test_check_fails_when_nvidia_smi_cannot_reach_the_driver(shims, entrypoint):
    run = shims(entrypoint, "--check", FAKE_SMI="broken")
    assert run.returncode == 1
    assert "couldn't communicate with the NVIDIA driver" in run.stderr


def test_check_fails_when_nvidia_smi_hangs(shims, entrypoint):
    run = shims(entrypoint, "--check", FAKE_SMI="hang", VOLTABUILD_NVIDIA_SMI_TIMEOUT="1")
    assert run.returncode == 1
    assert "nvidia-smi did not answer within 1 s" in run.stderr


def test_smoke_test_argv_as_the_command_checks_once(shims, entrypoint):
    # docker run IMAGE /usr/local/bin/entrypoint.sh --check: the entrypoint gets itself as $1
    run = shims(entrypoint, str(entrypoint), "--check")
    assert run.returncode == 0, run.stderr
    assert [c.split()[-1] for c in run.calls] == ["devices", "matmul"]
    assert run.stderr.count("NVIDIA driver") == 1


# --- canary --------------------------------------------------------------------------------

@pytest.fixture
def version_file(tmp_path):
    path = tmp_path / "canary-version"
    path.write_text("1.0\n")
    path.chmod(0o644)
    tmp_path.chmod(0o755)
    return str(path)


def as_non_root() -> tuple[str, ...]:
    """The canary refuses to pass as root; when these tests run as root, drop to nobody."""
    if os.geteuid() != 0:
        return ()
    tool = shutil.which("setpriv")
    if tool is None:
        pytest.skip("running as root without setpriv (util-linux) to drop privileges")
    return (tool, "--reuid=65534", "--regid=65534", "--clear-groups")


def test_canary_check_passes_without_gpu(shims, version_file, tmp_path):
    work = tmp_path / "work"
    work.mkdir(mode=0o777)
    work.chmod(0o777)
    run = shims(CANARY, "--check", gpu=False, shell="sh", wrap=as_non_root(), CANARY_VERSION_FILE=version_file,
                TMPDIR=str(work))
    assert run.returncode == 0, run.stderr
    assert "GPU: none visible" in run.stderr
    assert "canary version 1.0" in run.stderr
    assert "write and read back" in run.stderr
    assert "smoke test passed" in run.stderr


def test_canary_check_lists_gpus_when_there_are_some(shims, version_file, tmp_path):
    work = tmp_path / "work"
    work.mkdir(mode=0o777)
    work.chmod(0o777)
    run = shims(CANARY, "--check", shell="sh", wrap=as_non_root(), CANARY_VERSION_FILE=version_file,
                TMPDIR=str(work), VOLTABUILD_REQUIRE_GPU="1")
    assert run.returncode == 0, run.stderr
    assert "GPU 0, Tesla V100-SXM2-16GB, 16384 MiB, 550.54.15" in run.stderr


def test_canary_require_gpu_fails_without_gpu(shims, version_file):
    run = shims(CANARY, "--check", gpu=False, shell="sh", CANARY_VERSION_FILE=version_file,
                VOLTABUILD_REQUIRE_GPU="1")
    assert run.returncode == 1
    assert "VOLTABUILD_REQUIRE_GPU=1 but no GPU is visible" in run.stderr and "--gpus all" in run.stderr


def test_canary_check_fails_without_its_version_file(shims, tmp_path):
    run = shims(CANARY, "--check", gpu=False, shell="sh", CANARY_VERSION_FILE=str(tmp_path / "missing"))
    assert run.returncode == 1
    assert "cannot read the canary version" in run.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the canary as root")
def test_canary_check_fails_as_root(shims, version_file):
    run = shims(CANARY, "--check", gpu=False, shell="sh", CANARY_VERSION_FILE=version_file)
    assert run.returncode == 1
    assert "running as root" in run.stderr


def test_canary_runs_the_command(shims):
    run = shims(CANARY, "echo", "the command ran", gpu=False, shell="sh")
    assert (run.returncode, run.stdout) == (0, "the command ran\n")
