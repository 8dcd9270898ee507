"""The one place that picks the Keras implementation.

The project uses tf-keras (the Keras 2 API) rather than Keras 3: with Keras 3, `model.fit` under
MultiWorkerMirroredStrategy fails on PerReplica values (keras-team/keras#20585), while tf-keras
trains under Mirrored, MultiWorkerMirrored and Horovod and saves HDF5. Every module imports
`tf` and `keras` from here so the choice stays visible and `TF_USE_LEGACY_KERAS` is always set
before TensorFlow loads.
"""
import contextlib
import ctypes
import gc
import importlib.util
import os
import re
import sys
import tempfile
from pathlib import Path

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # training/main.py sets 0 for runtime.verbose

# TensorFlow's C++ start-up messages, which TF_CPP_MIN_LOG_LEVEL does not reach: absl writes
# whatever is logged before its InitializeLog to stderr (the CUDA stub's "Could not find cuda
# drivers", twice), and a failed cuInit is an error line on every CPU-only node.
START_UP_CHATTER = re.compile(
    r"[IWE]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] "  # absl: I0000 00:00:1796496422.54 31887 cudart_stub.cc:31]
    r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWE] "  # TensorFlow's own format
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|To enable the following instructions: ")  # the second line of cpu_feature_guard's


@contextlib.contextmanager
def _start_up_messages():
    """Holds back what is written to stderr (fd 2, C++ included) while TensorFlow loads, and
    passes on every line but START_UP_CHATTER; with TF_CPP_MIN_LOG_LEVEL 0 or 1, or when loading
    fails, every line."""
    try:
        saved = os.dup(2) if os.environ["TF_CPP_MIN_LOG_LEVEL"] not in ("0", "1") else None
    except OSError:  # no stderr at all: nothing to hold back
        saved = None
    if saved is None:
        yield
        return
    sys.stderr.flush()
    held = tempfile.TemporaryFile()  # a file, not a pipe: nothing to drain while TensorFlow writes
    os.dup2(held.fileno(), 2)
    failed = True
    try:
        yield
        failed = False
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        held.seek(0)
        for line in held.read().decode(errors="replace").splitlines(keepends=True):
            if failed or not START_UP_CHATTER.match(line):
                sys.stderr.write(line)
        sys.stderr.flush()
        held.close()


def _preload_cuda_wheels() -> None:
    """Loads the CUDA libraries of the gpu extra that TensorFlow 2.21 does not find by itself.

    Seen on an H100 node with `pip install .[gpu]`: TensorFlow found every nvidia-* wheel but
    cuSOLVER ("Could not load dynamic library 'libcusolver.so.11'"), then registered no GPU at
    all. A library already loaded under its soname is what a later dlopen returns, so loading it
    here, before TensorFlow, is the same as putting its folder on LD_LIBRARY_PATH.
    """
    spec = importlib.util.find_spec("nvidia.cusolver") if importlib.util.find_spec("nvidia") else None
    if spec is None or not spec.submodule_search_locations:
        return  # no gpu extra: a CPU install, or CUDA from the system
    for library in sorted((Path(list(spec.submodule_search_locations)[0]) / "lib").glob("libcusolver.so.*")):
        try:
            ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
        except OSError:
            pass  # TensorFlow then names what is missing itself


_preload_cuda_wheels()

# TensorFlow and tf-keras make about 300,000 objects while they load, and those live as long as
# the process. Python's cycle collector would walk all of them at every full collection: several
# times while they load, again while Keras traces its functions, and once more at exit. So they
# load with the collector off, and what they made is then frozen out of its reach (gc.freeze).
# Measured on 2 cores, five and four runs each: the import 3.0 -> 2.2 CPU-s; a 3-epoch local demo
# trainer 10.1 -> 8.8 CPU-s (the rest of the saving while tracing and at exit). Left uncollected:
# the ~1,500 cycles the import itself leaves (a few hundred KB).
_collecting = gc.isenabled()
gc.disable()
try:
    with _start_up_messages():
        import tensorflow as tf  # noqa: E402
        import tf_keras as keras  # noqa: E402

        tf.config.list_physical_devices("GPU")  # cuInit, and its messages, happen here
finally:
    gc.freeze()
    if _collecting:
        gc.enable()

__all__ = ["tf", "keras"]
