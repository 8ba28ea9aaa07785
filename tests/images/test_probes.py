"""The framework probes (dockerfiles/*/probe.py) run by this Python against small stand-in
framework packages: what `devices` reports; that the GPU check (`matmul`, which the entrypoint's
--check runs) fails on a wrong result, on a build without code for the GPU's architecture (naming
the missing sm_XY) and when the framework's own element-wise/reduction kernels fail; and the
architecture-coverage rule itself, against chalicelib.specs.gpu's."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chalicelib.launching.catalog_contexts import context_files
from chalicelib.specs.gpu import Arch

ROOT = Path(__file__).resolve().parents[2]

FAKE_TORCH = '''
import os
__version__ = "2.5.1+cu124"
GPUS = int(os.environ.get("FAKE_GPUS", "1"))
ARCHS = os.environ.get("FAKE_ARCHS", "sm_50 sm_60 sm_70 sm_75 sm_80 sm_86 sm_90").split()
CC = tuple(int(p) for p in os.environ.get("FAKE_CC", "7.0").split("."))
float32 = "float32"

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
    @staticmethod
    def get_arch_list():
        return list(ARCHS) if GPUS else []
    @staticmethod
    def get_device_capability(index):
        if GPUS == 0:
            raise RuntimeError("Found no NVIDIA driver on your system")
        return CC

class Generator:
    def manual_seed(self, seed):
        return self

class Tensor:
    """A stand-in that tracks one number (the error a product carries) or, for the element-wise
    and reduction kernels, a list of numbers."""
    def __init__(self, value=1.0, device="cpu"):
        self.value, self.device = value, device
    def _launch(self):
        # what CUDA answers when the build has no code the GPU can run: torch's own kernels fail
        if str(self.device).startswith("cuda") and os.environ.get("FAKE_NO_KERNEL_IMAGE"):
            raise RuntimeError("CUDA error: no kernel image is available for execution on the device")
    def __mul__(self, k):
        self._launch()
        return Tensor([v * k for v in self.value], self.device)
    def __add__(self, k):
        self._launch()
        return Tensor([v + k for v in self.value], self.device)
    def sum(self):
        self._launch()
        device = "cpu" if os.environ.get("FAKE_REDUCE_ON_CPU") else self.device
        return Tensor(float(sum(self.value)) + float(os.environ.get("FAKE_SUM_ERR", "0")), device)
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

def arange(n, dtype=None, device="cpu"):
    if str(device).startswith("cuda") and GPUS == 0:
        raise RuntimeError("Found no NVIDIA driver on your system")
    return Tensor([float(i) for i in range(n)], device)
'''

FAKE_TENSORFLOW = '''
import builtins
import contextlib
import os
__version__ = "2.18.0"
float32 = "float32"
CC = tuple(int(p) for p in os.environ.get("FAKE_CC", "8.6").split("."))
_placement = ["/job:localhost/replica:0/task:0/device:CPU:0"]

class config:
    @staticmethod
    def list_physical_devices(kind):
        return ["/physical_device:GPU:%d" % i for i in builtins.range(int(os.environ.get("FAKE_GPUS", "1")))]
    class experimental:
        @staticmethod
        def get_device_details(device):
            return {"device_name": "NVIDIA A10G", "compute_capability": CC}

class sysconfig:
    @staticmethod
    def get_build_info():
        info = {"cuda_version": "12.5.1", "cudnn_version": "9"}
        if "FAKE_ARCHS" in os.environ:
            info["cuda_compute_capabilities"] = os.environ["FAKE_ARCHS"].split()
        return info

@contextlib.contextmanager
def device(name):
    _placement.append("/job:localhost/replica:0/task:0/device:" + name.strip("/"))
    yield
    _placement.pop()

class Tensor:
    def __init__(self, value):
        self.value, self.device = value, _placement[-1]
        if "GPU" in self.device and os.environ.get("FAKE_NO_KERNEL_IMAGE"):
            raise RuntimeError("CUDA_ERROR_NO_BINARY_FOR_GPU: no kernel image is available for execution on the device")
    def __mul__(self, k):
        return Tensor([v * k for v in self.value])
    def __add__(self, k):
        return Tensor([v + k for v in self.value])
    def numpy(self):
        return self.value

def range(n, dtype=None):
    return Tensor([float(i) for i in builtins.range(n)])

def reduce_sum(t):
    return Tensor(float(sum(t.value)) + float(os.environ.get("FAKE_SUM_ERR", "0")))
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

class Context:
    def __init__(self, kind, index):
        self.kind, self.index = kind, index
    def __eq__(self, other):
        return (self.kind, self.index) == (other.kind, other.index)
    def __repr__(self):
        return "%s(%d)" % (self.kind, self.index)

def gpu(index=0):
    return Context("gpu", index)

class NDArray:
    def __init__(self, value, ctx):
        self.value, self.context = value, ctx
    def _launch(self):
        if self.context.kind == "gpu" and os.environ.get("FAKE_NO_KERNEL_IMAGE"):
            raise RuntimeError("[12:00:00] src/operator/tensor/./elemwise_binary_scalar_op.h: "
                               "Check failed: err == cudaSuccess (209 vs. 0) : Name: mxnet_generic_kernel "
                               "ErrStr:no kernel image is available for execution on the device")
    def __mul__(self, k):
        return NDArray([v * k for v in self.value], self.context)
    def __add__(self, k):
        return NDArray([v + k for v in self.value], self.context)
    def sum(self):
        return NDArray([float(sum(self.value)) + float(os.environ.get("FAKE_SUM_ERR", "0"))], self.context)
    def asscalar(self):
        self._launch()  # MXNet is asynchronous: an error surfaces when the value is read
        return self.value[0]

class nd:
    @staticmethod
    def arange(start, stop, ctx=None, dtype=None):
        return NDArray([float(i) for i in range(start, stop)], ctx)
'''


def packed_probe(framework: str, tmp_path: Path) -> Path:
    """probe.py as the image has it: in a folder with what the packed build context puts beside
    it (the shared files from dockerfiles/common/ its Dockerfile copies: gpu_arch.py)."""
    folder = tmp_path / "voltabuild"
    if not folder.is_dir():
        folder.mkdir()
        for rel, path in context_files(ROOT / "dockerfiles" / framework, ROOT / "dockerfiles" / "common").items():
            if rel.endswith(".py"):
                shutil.copy(path, folder / rel)
    return folder / "probe.py"


def probe(framework: str, fake_name: str, fake: str, tmp_path: Path, *args: str, **env: str):
    package = tmp_path / fake_name  # a stand-in package on PYTHONPATH
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text(textwrap.dedent(fake))
    return subprocess.run(
        [sys.executable, "-B", str(packed_probe(framework, tmp_path)), *args],
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
    result = subprocess.run([sys.executable, "-B", str(packed_probe(framework, tmp_path)), "devices"],
                            env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 1
    assert "ModuleNotFoundError" in result.stderr


@pytest.mark.parametrize("framework", ["pytorch", "tensorflow", "mxnet"])
def test_unknown_mode_is_a_usage_error(framework, tmp_path):
    result = subprocess.run([sys.executable, "-B", str(packed_probe(framework, tmp_path)), "train"],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2
    assert "usage:" in result.stderr and "devices|" in result.stderr and "|matmul|check}" in result.stderr


def test_torch_matmul_passes_with_tf32_off(tmp_path):
    result = probe("pytorch", "torch", FAKE_TORCH, tmp_path, "matmul", FAKE_ERR="1e-7")
    assert result.returncode == 0, result.stderr
    assert "matmul 1024x1024 on Tesla V100-SXM2-16GB: ok" in result.stdout


def test_torch_matmul_fails_on_a_wrong_result(tmp_path):
    result = probe("pytorch", "torch", FAKE_TORCH, tmp_path, "matmul", FAKE_ERR="0.5")
    assert result.returncode == 1
    assert "is wrong: max relative error" in result.stderr


def test_torch_matmul_fails_without_a_gpu(tmp_path):
    result = probe("pytorch", "torch", FAKE_TORCH, tmp_path, "matmul", FAKE_GPUS="0")
    assert result.returncode == 1
    assert "Found no NVIDIA driver" in result.stderr


# --- the GPU check catches GPU code that does not fit the GPU ----------------------------

def test_torch_check_passes_when_the_build_covers_the_gpu(tmp_path):
    # GIVEN a V100 (7.0) and a torch whose arch list has sm_70
    result = probe("pytorch", "torch", FAKE_TORCH, tmp_path, "matmul")
    # THEN the check says so, then runs torch's own kernels and the matmul
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert line.startswith("arch: sm_70 (Tesla V100-SXM2-16GB) is covered by sm_70 (machine code); ")
    assert "kernels: element-wise and reduction over 4096 floats on Tesla V100-SXM2-16GB: ok" in line
    assert "matmul 1024x1024" in line


def test_torch_check_fails_naming_the_missing_architecture(tmp_path):
    # GIVEN an H100 (9.0) and a torch built for Ampere and older only, no PTX
    result = probe("pytorch", "torch", FAKE_TORCH, tmp_path, "matmul",
                   FAKE_CC="9.0", FAKE_ARCHS="sm_50 sm_60 sm_70 sm_75 sm_80 sm_86")
    # THEN the check fails before any kernel and names sm_90 and the build's list
    assert result.returncode == 1
    assert "torch 2.5.1+cu124 has no GPU code for Tesla V100-SXM2-16GB (compute capability 9.0): sm_90 is missing" in result.stderr
    assert "Its architectures are sm_50 sm_60 sm_70 sm_75 sm_80 sm_86" in result.stderr
    assert "TORCH_CUDA_ARCH_LIST" in result.stderr
    assert result.stdout == ""


def test_torch_check_accepts_ptx_the_driver_can_jit(tmp_path):
    result = probe("pytorch", "torch", FAKE_TORCH, tmp_path, "arch", FAKE_CC="9.0", FAKE_ARCHS="sm_80 sm_86 compute_86")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "arch: sm_90 (Tesla V100-SXM2-16GB) is covered by compute_86 (PTX the driver JIT-compiles)\n"


def test_torch_check_accepts_an_earlier_minor_of_the_same_major(tmp_path):
    # an L4 (8.9) runs sm_80 machine code
    result = probe("pytorch", "torch", FAKE_TORCH, tmp_path, "arch", FAKE_CC="8.9", FAKE_ARCHS="sm_70 sm_80")
    assert result.returncode == 0, result.stderr
    assert "covered by sm_80 (machine code)" in result.stdout


@pytest.mark.parametrize(
    "env,message",
    [
        # the arch list claims the GPU but torch's own kernels cannot launch (what a real missing
        # sm_XY does to the first element-wise op while cuBLAS still multiplies correctly)
        ({"FAKE_NO_KERNEL_IMAGE": "1"}, "no kernel image is available for execution on the device"),
        ({"FAKE_SUM_ERR": "1"}, "element-wise + reduction on Tesla V100-SXM2-16GB is wrong: sum 16777217.0, expected 16777216"),
        ({"FAKE_REDUCE_ON_CPU": "1"}, "the reduction ran on cpu, not on a GPU"),
    ],
    ids=["no-kernel-image", "wrong-sum", "ran-on-cpu"],
)
def test_torch_check_fails_when_torchs_own_kernels_fail(tmp_path, env, message):
    result = probe("pytorch", "torch", FAKE_TORCH, tmp_path, "matmul", **env)
    assert result.returncode == 1
    assert message in result.stderr


def test_tensorflow_arch_check_uses_the_build_info(tmp_path):
    ok = probe("tensorflow", "tensorflow", FAKE_TENSORFLOW, tmp_path, "arch",
               FAKE_CC="8.6", FAKE_ARCHS="sm_60 sm_70 sm_80 sm_89 compute_90")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "arch: sm_86 (NVIDIA A10G) is covered by sm_80 (machine code)\n"
    # the same build on a Volta GPU: 6.0 machine code does not run on 7.x, PTX 9.0 is too new
    bad = probe("tensorflow", "tensorflow", FAKE_TENSORFLOW, tmp_path, "matmul",
                FAKE_CC="7.5", FAKE_ARCHS="sm_60 sm_80 sm_89 compute_90")
    assert bad.returncode == 1
    assert "tensorflow 2.18.0 has no GPU code for NVIDIA A10G (compute capability 7.5): sm_75 is missing" in bad.stderr


def test_tensorflow_without_an_arch_list_fails_saying_so(tmp_path):
    result = probe("tensorflow", "tensorflow", FAKE_TENSORFLOW, tmp_path, "arch")
    assert result.returncode == 1
    assert "does not say which GPU architectures it was built for" in result.stderr


def test_tensorflow_kernels_run_on_the_gpu_or_fail(tmp_path):
    ok = probe("tensorflow", "tensorflow", FAKE_TENSORFLOW, tmp_path, "kernels")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "kernels: element-wise and reduction over 4096 floats on NVIDIA A10G: ok\n"
    bad = probe("tensorflow", "tensorflow", FAKE_TENSORFLOW, tmp_path, "kernels", FAKE_NO_KERNEL_IMAGE="1")
    assert bad.returncode == 1
    assert "no kernel image is available" in bad.stderr
    wrong = probe("tensorflow", "tensorflow", FAKE_TENSORFLOW, tmp_path, "kernels", FAKE_SUM_ERR="-3")
    assert wrong.returncode == 1
    assert "is wrong: sum 16777213.0" in wrong.stderr


def test_mxnet_kernels_run_on_the_gpu_or_fail(tmp_path):
    ok = probe("mxnet", "mxnet", FAKE_MXNET, tmp_path, "kernels")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "kernels: element-wise and reduction over 4096 floats on gpu(0): ok\n"
    # MXNet reports no arch list: a missing architecture shows as its own kernels failing
    bad = probe("mxnet", "mxnet", FAKE_MXNET, tmp_path, "matmul", FAKE_NO_KERNEL_IMAGE="1")
    assert bad.returncode == 1
    assert "no kernel image is available for execution on the device" in bad.stderr


# --- the coverage rule, one copy shared by the PyTorch and TensorFlow probes -------------

def _load_gpu_arch():
    spec = importlib.util.spec_from_file_location("gpu_arch", ROOT / "dockerfiles" / "common" / "gpu_arch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GPU_ARCH = _load_gpu_arch()


@pytest.mark.parametrize("framework", ["pytorch", "tensorflow"])
def test_the_coverage_rule_is_one_copy_packed_beside_each_probe(framework):
    # the probe imports the shared rule and keeps no copy of its own
    text = (ROOT / "dockerfiles" / framework / "probe.py").read_text()
    assert "from gpu_arch import check_arch" in text
    assert "def covering" not in text and "def parse_arch" not in text and "_ARCH = " not in text
    # and the packed build context carries it (the Dockerfile copies it next to probe.py)
    files = context_files(ROOT / "dockerfiles" / framework, ROOT / "dockerfiles" / "common")
    assert files["gpu_arch.py"] == ROOT / "dockerfiles" / "common" / "gpu_arch.py"
    assert not (ROOT / "dockerfiles" / framework / "gpu_arch.py").exists()


@pytest.mark.parametrize(
    "archs,cc,expected",
    [
        (["sm_70", "sm_80"], (7, 0), "sm_70"),
        (["sm_70", "sm_80"], (8, 6), "sm_80"),          # same major, later minor
        (["sm_70", "sm_80"], (9, 0), None),             # never across majors
        (["sm_80", "compute_80"], (9, 0), "compute_80"),  # PTX JITs upwards
        (["compute_90"], (8, 9), None),                 # PTX never downwards
        (["sm_90a"], (9, 0), "sm_90a"),                 # arch-specific: exactly 9.0
        (["sm_90a"], (10, 0), None),
        (["compute_90a"], (10, 0), None),
        (["sm_100f"], (10, 3), "sm_100f"),              # family-specific: same major
        (["sm_120"], (12, 0), "sm_120"),
        (["8.0"], (8, 6), "8.0"),                       # dotted: machine code and PTX
        (["8.0"], (9, 0), "8.0"),
        (["sm_86", "compute_70", "sm_75"], (7, 5), "sm_75"),  # machine code preferred over PTX
        ([], (7, 0), None),
        (["gfx90a", "sm_x"], (7, 0), None),
    ],
)
def test_covering(archs, cc, expected):
    assert GPU_ARCH.covering(archs, cc) == expected


cc_strategy = st.tuples(st.integers(5, 12), st.integers(0, 9))


@given(entries=st.lists(st.tuples(cc_strategy, st.booleans()), max_size=5), gpu=cc_strategy)
def test_covering_agrees_with_the_service_rule(entries, gpu):
    # The API refuses a source build whose TORCH_CUDA_ARCH_LIST misses a GPU (chalicelib.specs.gpu);
    # the image's own check must judge the same list the same way. "8.6+PTX" builds sm_86 and
    # compute_86, which is what torch.cuda.get_arch_list() then reports.
    archs = [Arch(cc, ptx) for cc, ptx in entries]
    arch_list = []
    for a in archs:
        arch_list.append(f"sm_{a.cc[0]}{a.cc[1]}")
        if a.ptx:
            arch_list.append(f"compute_{a.cc[0]}{a.cc[1]}")
    expected = any(a.covers(gpu) for a in archs)
    assert (GPU_ARCH.covering(arch_list, gpu) is not None) == expected
