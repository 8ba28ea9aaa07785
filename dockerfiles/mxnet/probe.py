"""What Apache MXNet sees of the GPUs, and whether its own GPU code runs on them; entrypoint.sh
runs `probe.py devices` ("<count> <description>") and, for --check, `probe.py matmul` (= `check`):
`kernels` (its own element-wise and reduction kernels), then a cuBLAS matmul. MXNet does not
report the architectures it was built for, so the kernels are the proof (README.md). Runs on
Python 3.8. Exits non-zero, with a traceback, when a check fails.
"""

import sys

SIZE = 1024
TOLERANCE = 1e-3  # max relative error of float32 GPU vs float64 CPU matmul
N = 4096  # sum(2i + 1 for i < N) = N*N = 2**24: every partial sum is exact in float32


def devices():
    import mxnet as mx

    features = mx.runtime.Features()
    cuda = "CUDA" if features.is_enabled("CUDA") else "no CUDA"
    cudnn = "cuDNN" if features.is_enabled("CUDNN") else "no cuDNN"
    return f"{mx.context.num_gpus()} mxnet {mx.__version__} (built with {cuda}, {cudnn})"


def kernels():
    import mxnet as mx

    gpu = mx.gpu(0)
    x = mx.nd.arange(0, N, ctx=gpu, dtype="float32")
    y = x * 2 + 1  # element-wise kernels
    total = y.sum()  # a reduction kernel
    if total.context != gpu:
        raise RuntimeError(f"the reduction ran on {total.context}, not on {gpu}")
    got = float(total.asscalar())  # MXNet runs asynchronously: a kernel that failed raises here
    if got != N * N:
        raise RuntimeError(f"element-wise + reduction on {gpu} is wrong: sum {got}, expected {N * N}")
    return f"kernels: element-wise and reduction over {N} floats on {gpu}: ok"


def matmul_only():
    import mxnet as mx
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((SIZE, SIZE)).astype(np.float32)
    b = rng.standard_normal((SIZE, SIZE)).astype(np.float32)
    expected = a.astype(np.float64) @ b.astype(np.float64)
    gpu = mx.gpu(0)
    got = mx.nd.dot(mx.nd.array(a, ctx=gpu), mx.nd.array(b, ctx=gpu)).asnumpy()
    err = float(np.abs(got - expected).max() / np.abs(expected).max())
    if not err < TOLERANCE:
        raise RuntimeError(f"matmul on {gpu} is wrong: max relative error {err:.2e} (limit {TOLERANCE:.0e})")
    return f"matmul {SIZE}x{SIZE} on {gpu}: ok (max relative error {err:.1e})"


def check():
    return "; ".join(step() for step in (kernels, matmul_only))


MODES = {"devices": devices, "kernels": kernels, "matmul": check, "check": check}


def main(argv):
    if len(argv) != 2 or argv[1] not in MODES:
        print(f"usage: {argv[0]} {{{'|'.join(MODES)}}}", file=sys.stderr)
        return 2
    print(MODES[argv[1]]())  # an exception prints its traceback and exits 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
