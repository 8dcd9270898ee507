"""Optimizers built from the config: weight decay shrinks the weights, as a user setting it expects."""
import numpy as np
import pytest

from core.config import ConfigError, OptimizerConfig, load_config
from training.keras_compat import keras, tf
from training.optim import build_optimizer

LR = 0.5
DECAY = 0.1


def weights_after_one_step(name: str, weight_decay: float) -> tuple[np.ndarray, np.ndarray]:
    """Returns (kernel before, kernel after) one optimizer step of a tiny dense model on CPU."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.layers.Dense(3, input_shape=(4,))])
    model.compile(optimizer=build_optimizer(OptimizerConfig(name=name, weight_decay=weight_decay), LR),
                  loss="mse")
    before = model.layers[0].kernel.numpy().copy()
    x = tf.constant(np.random.default_rng(0).normal(size=(8, 4)), tf.float32)
    model.train_on_batch(x, tf.zeros((8, 3)))
    return before, model.layers[0].kernel.numpy()


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_weight_decay_shrinks_weights_by_lr_times_decay_in_one_step(name):
    before, plain = weights_after_one_step(name, 0.0)
    _, decayed = weights_after_one_step(name, DECAY)
    # Decoupled decay: the same gradient step, plus w -= lr * weight_decay * w.
    np.testing.assert_allclose(plain - decayed, LR * DECAY * before, rtol=1e-4, atol=1e-6)
    assert np.linalg.norm(decayed) < np.linalg.norm(plain)


def test_negative_weight_decay_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"optimizer\.weight_decay.*below the minimum 0"):
        load_config(overrides=["optimizer.weight_decay=-0.0001"])
