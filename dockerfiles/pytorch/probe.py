"""What PyTorch sees of the GPUs; entrypoint.sh runs it.

    python probe.py devices   prints "<count> <description>": the CUDA devices torch can use
    python probe.py matmul    multiplies two 1024x1024 matrices on GPU 0 and compares with the CPU

Exits non-zero, with a traceback on stderr, when torch cannot be imported or the result is wrong.
Kept compatible with the oldest Python an image ships.
"""

import sys

SIZE = 1024
TOLERANCE = 1e-3  # max relative error of float32 GPU vs CPU matmul (TF32 disabled)


def devices():
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return f"{count} torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})"


def matmul():
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


MODES = {"devices": devices, "matmul": matmul}


def main(argv):
    if len(argv) != 2 or argv[1] not in MODES:
        print(f"usage: {argv[0]} {{{'|'.join(MODES)}}}", file=sys.stderr)
        return 2
    print(MODES[argv[1]]())  # an exception prints its traceback and exits 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
