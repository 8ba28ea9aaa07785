"""What TensorFlow sees of the GPUs, and whether its own GPU code runs on them; entrypoint.sh runs
`probe.py devices` ("<count> <description>") and, for --check, `probe.py matmul` (= `check`):
`arch` (the build covers GPU 0's architecture, else the missing sm_XY is named), `kernels` (its own
element-wise and reduction kernels), then a cuBLAS matmul. README.md says why a matmul alone is
not enough. Exits non-zero, with a traceback, when a check fails.
"""

import os
import sys

from gpu_arch import check_arch  # dockerfiles/common/gpu_arch.py, packed beside this file

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out of the report

SIZE = 1024
TOLERANCE = 1e-3  # max relative error of float32 GPU vs float64 CPU matmul (TF32 disabled)
N = 4096  # sum(2i + 1 for i < N) = N*N = 2**24: every partial sum is exact in float32

def devices():
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    build = tf.sysconfig.get_build_info()
    return (
        f"{len(gpus)} tensorflow {tf.__version__} "
        f"(CUDA {build.get('cuda_version', '?')}, cuDNN {build.get('cudnn_version', '?')})"
    )


def _gpu0():
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        raise RuntimeError("TensorFlow sees no GPU")
    return tf.config.experimental.get_device_details(gpus[0])


def arch():
    import tensorflow as tf

    details = _gpu0()
    name = details.get("device_name", "GPU 0")
    if "compute_capability" not in details:
        raise RuntimeError(f"TensorFlow reports no compute capability for {name}")
    archs = tf.sysconfig.get_build_info().get("cuda_compute_capabilities")
    if not archs:
        raise RuntimeError(f"tensorflow {tf.__version__} does not say which GPU architectures it was built for "
                           "(no cuda_compute_capabilities in tf.sysconfig.get_build_info())")
    fix = "Choose a TensorFlow release built for it (TensorFlow's pip builds list theirs in get_build_info())."
    return "arch: " + check_arch(list(archs), tuple(details["compute_capability"]), name,
                                 f"tensorflow {tf.__version__}", fix)


def kernels():
    import tensorflow as tf

    name = _gpu0().get("device_name", "GPU 0")
    with tf.device("/GPU:0"):
        x = tf.range(N, dtype=tf.float32)
        y = x * 2.0 + 1.0  # element-wise kernels
        total = tf.reduce_sum(y)  # a reduction kernel
    if "GPU" not in total.device:
        raise RuntimeError(f"the reduction ran on {total.device}, not on a GPU")
    got = float(total.numpy())
    if got != N * N:
        raise RuntimeError(f"element-wise + reduction on {name} is wrong: sum {got}, expected {N * N}")
    return f"kernels: element-wise and reduction over {N} floats on {name}: ok"


def matmul_only():
    import numpy as np
    import tensorflow as tf

    tf.config.experimental.enable_tensor_float_32_execution(False)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((SIZE, SIZE)).astype(np.float32)
    b = rng.standard_normal((SIZE, SIZE)).astype(np.float32)
    expected = a.astype(np.float64) @ b.astype(np.float64)
    with tf.device("/GPU:0"):
        product = tf.linalg.matmul(tf.constant(a), tf.constant(b))
    if "GPU" not in product.device:
        raise RuntimeError(f"matmul ran on {product.device}, not on a GPU")
    err = float(np.abs(product.numpy() - expected).max() / np.abs(expected).max())
    name = _gpu0().get("device_name", "GPU 0")
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
