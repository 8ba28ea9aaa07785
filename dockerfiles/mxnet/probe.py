"""What Apache MXNet sees of the GPUs; entrypoint.sh runs it.

    python probe.py devices   prints "<count> <description>": the GPUs MXNet can use
    python probe.py matmul    multiplies two 1024x1024 matrices on GPU 0 and compares with numpy

Exits non-zero, with a traceback on stderr, when MXNet cannot be imported or the result is wrong.
Runs on Python 3.8 (the last Python MXNet 1.9.1 wheels were built for).
"""

import sys

SIZE = 1024
TOLERANCE = 1e-3  # max relative error of float32 GPU vs float64 CPU matmul


def devices():
    import mxnet as mx

    features = mx.runtime.Features()
    cuda = "CUDA" if features.is_enabled("CUDA") else "no CUDA"
    cudnn = "cuDNN" if features.is_enabled("CUDNN") else "no cuDNN"
    return f"{mx.context.num_gpus()} mxnet {mx.__version__} (built with {cuda}, {cudnn})"


def matmul():
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


MODES = {"devices": devices, "matmul": matmul}


def main(argv):
    if len(argv) != 2 or argv[1] not in MODES:
        print(f"usage: {argv[0]} {{{'|'.join(MODES)}}}", file=sys.stderr)
        return 2
    print(MODES[argv[1]]())  # an exception prints its traceback and exits 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
