"""The one place that picks the Keras implementation.

The project uses tf-keras (the Keras 2 API) rather than Keras 3: with Keras 3, `model.fit` under
MultiWorkerMirroredStrategy fails on PerReplica values (keras-team/keras#20585), while tf-keras
trains under Mirrored, MultiWorkerMirrored and Horovod and saves HDF5. Every module imports
`tf` and `keras` from here so the choice stays visible and `TF_USE_LEGACY_KERAS` is always set
before TensorFlow loads.
"""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

__all__ = ["tf", "keras"]
