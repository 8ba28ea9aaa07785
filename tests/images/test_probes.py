"""The framework probes (dockerfiles/*/probe.py) run by this Python against small stand-in
framework modules: what `devices` reports, and that `matmul` fails on a wrong GPU result."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FAKE_TORCH = '''
import os
__version__ = "2.5.1+cu124"
GPUS = int(os.environ.get("FAKE_GPUS", "1"))

class version:
    cuda = "12.4"

class backends:
    class cudnn:
        @staticmethod
        def version():
            return 90100
    class cuda:
        class matmul:
            allow_tf32 = True  # as on Ampere+ in some releases: the probe must turn it off

class cuda:
    @staticmethod
    def is_available():
        return GPUS > 0
    @staticmethod
    def device_count():
        return GPUS
    @staticmethod
    def get_device_name(index):
        return "Tesla V100-SXM2-16GB"

class Generator:
    def manual_seed(self, seed):
        return self

class Tensor:
    """A stand-in that tracks one number: the error a product carries."""
    def __init__(self, value=1.0, device="cpu"):
        self.value, self.device = value, device
    def to(self, device):
        if GPUS == 0:
            raise RuntimeError("Found no NVIDIA driver on your system")
        return Tensor(self.value, device)
    def cpu(self):
        return Tensor(self.value)
    def __matmul__(self, other):
        if self.device == "cpu":
            return Tensor(1.0)
        err = float(os.environ.get("FAKE_ERR", "0")) + (1e-2 if backends.cuda.matmul.allow_tf32 else 0)
        return Tensor(1.0 + err, self.device)
    def __sub__(self, other):
        return Tensor(self.value - other.value)
    def __truediv__(self, other):
        return Tensor(self.value / other.value)
    def abs(self):
        return Tensor(abs(self.value))
    def max(self):
        return self
    def item(self):
        return self.value

def randn(*shape, generator=None):
    return Tensor()
'''

FAKE_TENSORFLOW = '''
import os
__version__ = "2.18.0"
class config:
    @staticmethod
    def list_physical_devices(kind):
        return ["/physical_device:GPU:%d" % i for i in range(int(os.environ.get("FAKE_GPUS", "1")))]
class sysconfig:
    @staticmethod
    def get_build_info():
        return {"cuda_version": "12.5.1", "cudnn_version": "9"}
'''

FAKE_MXNET = '''
import os
__version__ = "1.9.1"
class runtime:
    class Features:
        def is_enabled(self, name):
            return name in ("CUDA", "CUDNN")
class context:
    @staticmethod
    def num_gpus():
        return int(os.environ.get("FAKE_GPUS", "1"))
'''


def probe(framework: str, fake_name: str, fake: str, tmp_path: Path, *args: str, **env: str):
    (tmp_path / f"{fake_name}.py").write_text(textwrap.dedent(fake))
    script = ROOT / "dockerfiles" / framework / "probe.py"
    return subprocess.run(
        [sys.executable, "-B", str(script), *args],
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin", **env},
        cwd=tmp_path, capture_output=True, text=True, timeout=30,
    )


@pytest.mark.parametrize(
    "framework,fake_name,fake,expected",
    [
        ("pytorch", "torch", FAKE_TORCH, "2 torch 2.5.1+cu124 (CUDA 12.4, cuDNN 90100)"),
        ("tensorflow", "tensorflow", FAKE_TENSORFLOW, "2 tensorflow 2.18.0 (CUDA 12.5.1, cuDNN 9)"),
        ("mxnet", "mxnet", FAKE_MXNET, "2 mxnet 1.9.1 (built with CUDA, cuDNN)"),
    ],
)
def test_devices_prints_the_count_first(framework, fake_name, fake, expected, tmp_path):
    result = probe(framework, fake_name, fake, tmp_path, "devices", FAKE_GPUS="2")
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected + "\n"


@pytest.mark.parametrize("framework", ["pytorch", "tensorflow", "mxnet"])
def test_a_missing_framework_fails_the_probe(framework, tmp_path):
    result = subprocess.run([sys.executable, "-B", str(ROOT / "dockerfiles" / framework / "probe.py"), "devices"],
                            env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 1
    assert "ModuleNotFoundError" in result.stderr


@pytest.mark.parametrize("framework", ["pytorch", "tensorflow", "mxnet"])
def test_unknown_mode_is_a_usage_error(framework, tmp_path):
    result = subprocess.run([sys.executable, "-B", str(ROOT / "dockerfiles" / framework / "probe.py"), "train"],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2
    assert "usage:" in result.stderr and "devices|matmul" in result.stderr


def test_torch_matmul_passes_with_tf32_off(tmp_path):
    result = probe("pytorch", "torch", FAKE_TORCH, tmp_path, "matmul", FAKE_ERR="1e-7")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("matmul 1024x1024 on Tesla V100-SXM2-16GB: ok")


def test_torch_matmul_fails_on_a_wrong_result(tmp_path):
    result = probe("pytorch", "torch", FAKE_TORCH, tmp_path, "matmul", FAKE_ERR="0.5")
    assert result.returncode == 1
    assert "is wrong: max relative error" in result.stderr


def test_torch_matmul_fails_without_a_gpu(tmp_path):
    result = probe("pytorch", "torch", FAKE_TORCH, tmp_path, "matmul", FAKE_GPUS="0")
    assert result.returncode == 1
    assert "Found no NVIDIA driver" in result.stderr
