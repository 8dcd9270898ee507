"""The one place that picks the Keras implementation.

The project uses tf-keras (the Keras 2 API) rather than Keras 3: with Keras 3, `model.fit` under
MultiWorkerMirroredStrategy fails on PerReplica values (keras-team/keras#20585), while tf-keras
trains under Mirrored, MultiWorkerMirrored and Horovod and saves HDF5. Every module imports
`tf` and `keras` from here so the choice stays visible and `TF_USE_LEGACY_KERAS` is always set
before TensorFlow loads.
"""
import ctypes
import importlib.util
import os
from pathlib import Path

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


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

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

__all__ = ["tf", "keras"]
