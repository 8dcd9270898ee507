"""What evaluation and prediction share, for images and texts alike: a run's config, its named
checkpoints and the model loaded from one (training/evaluate.py, training/predict_text.py)."""
from __future__ import annotations

from pathlib import Path

from core import config as config_lib
from core.errors import UserError
from core.rundir import RunDir


class EvaluateError(UserError, ValueError):
    """A user-facing problem; the message is one line: what, where, what to do."""


def load_config(run_dir: Path) -> config_lib.Config:
    run = RunDir(run_dir)
    if not run.exists():
        raise EvaluateError(f"{run_dir} is not a run directory (no {run.config.name}); pass --run-dir of a run")
    return config_lib.load_run_config(run_dir)


def checkpoint_path(run_dir: Path, checkpoint: str) -> Path:
    """The HDF5 file of a named checkpoint (RunDir.checkpoint), or the path given."""
    return RunDir(run_dir).checkpoint(checkpoint)


def load_model(path: Path):
    """A tf-keras model from an HDF5 file, uncompiled (metrics are computed here, not by Keras)."""
    from training.keras_compat import keras  # defers TensorFlow

    try:
        from training import models  # defers TensorFlow
        custom = getattr(models, "custom_objects", dict)()
    except ImportError:  # a model of only built-in layers still loads
        custom = {}
    return keras.models.load_model(path, custom_objects=custom, compile=False)


def text_classifier(model, layer):
    """The model over raw texts: one traced function (a 1-D string tensor in, the model's outputs
    out, the tokenizer layer inside), traced once for any batch size. Per batch it costs one call,
    where an eager tokenizer call and Keras' predict_on_batch set-up cost several times the model."""
    from training.keras_compat import tf  # defers TensorFlow

    return tf.function(lambda texts: model(layer(texts), training=False),
                       input_signature=[tf.TensorSpec([None], tf.string)])
