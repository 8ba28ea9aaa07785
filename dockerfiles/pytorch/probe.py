"""What PyTorch sees of the GPUs, and whether its own GPU code runs on them; entrypoint.sh runs
`probe.py devices` ("<count> <description>") and, for --check, `probe.py matmul` (= `check`):
`arch` (the build covers GPU 0's architecture, else the missing sm_XY is named), `kernels` (its own
element-wise and reduction kernels), then a cuBLAS matmul. README.md says why a matmul alone is
not enough. Exits non-zero, with a traceback, when a check fails.
"""

import sys

from gpu_arch import check_arch  # dockerfiles/common/gpu_arch.py, packed beside this file

SIZE = 1024
TOLERANCE = 1e-3  # max relative error of float32 GPU vs CPU matmul (TF32 disabled)
N = 4096  # sum(2i + 1 for i < N) = N*N = 2**24: every partial sum is exact in float32

def devices():
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return f"{count} torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})"


def arch():
    import torch

    cc = tuple(torch.cuda.get_device_capability(0))
    name = torch.cuda.get_device_name(0)
    fix = ("Add it to TORCH_CUDA_ARCH_LIST (source builds), or choose a PyTorch/CUDA combination whose "
           "wheels include it.")
    return "arch: " + check_arch(list(torch.cuda.get_arch_list()), cc, name, f"torch {torch.__version__}", fix)


def kernels():
    import torch

    x = torch.arange(N, dtype=torch.float32, device="cuda:0")
    y = x * 2 + 1  # element-wise kernels
    total = y.sum()  # a reduction kernel
    if "cuda" not in str(total.device):
        raise RuntimeError(f"the reduction ran on {total.device}, not on a GPU")
    got = total.item()  # synchronizes: a kernel that could not launch raises here at the latest
    if got != N * N:
        raise RuntimeError(f"element-wise + reduction on {torch.cuda.get_device_name(0)} is wrong: sum {got}, expected {N * N}")
    return f"kernels: element-wise and reduction over {N} floats on {torch.cuda.get_device_name(0)}: ok"


def matmul_only():
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(SIZE, SIZE, generator=gen)
    b = torch.randn(SIZE, SIZE, generator=gen)
    expected = a @ b
    got = (a.to("cuda:0") @ b.to("cuda:0")).cpu()
    err = ((got - expected).abs().max() / expected.abs().max()).item()
    name = torch.cuda.get_device_name(0)
    if not err < TOLERANCE:
        raise RuntimeError(f"matmul on {name} is wrong: max relative error {err:.2e} (limit {TOLERANCE:.0e})")
    return f"matmul {SIZE}x{SIZE} on {name}: ok (max relative error {err:.1e})"


def check():
    return "; ".join(step() for step in (arch, kernels, matmul_only))


MODES = {"devices": devices, "arch": arch, "kernels": kernels, "matmul": check, "check": check}


def main(argv):
    if len(argv) != 2 or argv[1] not in MODES:
        print(f"usage: {argv[0]} {{{'|'.join(MODES)}}}", file=sys.stderr)
        return 2
    print(MODES[argv[1]]())  # an exception prints its traceback and exits 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
