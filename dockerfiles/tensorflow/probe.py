"""What TensorFlow sees of the GPUs; entrypoint.sh runs it.

    python probe.py devices   prints "<count> <description>": the GPUs TensorFlow can use
    python probe.py matmul    multiplies two 1024x1024 matrices on GPU 0 and compares with numpy

Exits non-zero, with a traceback on stderr, when TensorFlow cannot be imported or the result is wrong.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out of the report

SIZE = 1024
TOLERANCE = 1e-3  # max relative error of float32 GPU vs float64 CPU matmul (TF32 disabled)


def devices():
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    build = tf.sysconfig.get_build_info()
    return (
        f"{len(gpus)} tensorflow {tf.__version__} "
        f"(CUDA {build.get('cuda_version', '?')}, cuDNN {build.get('cudnn_version', '?')})"
    )


def matmul():
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
    name = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0]).get("device_name", "GPU 0")
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
