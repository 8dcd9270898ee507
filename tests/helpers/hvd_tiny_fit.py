"""A tiny Horovod Keras fit that writes what each rank ended with, for tests/test_horovod_build.py.

Run under any Horovod launcher, e.g.::

    horovodrun --gloo -np 2 python tests/helpers/hvd_tiny_fit.py OUT_DIR

Each rank writes OUT_DIR/rank<N>.json. Ranks start from different weights and train on disjoint
shards, so equal final weights show that both the initial broadcast and the gradient allreduce ran,
and equal final metrics show that MetricAverageCallback averaged them.
"""
import json
import os
import sys

from training.keras_compat import keras  # sets TF_USE_LEGACY_KERAS before TensorFlow loads

import horovod.tensorflow.keras as hvd  # noqa: E402  (after keras_compat on purpose)
import numpy as np  # noqa: E402

BASE_LEARNING_RATE = 0.05
GLOBAL_EXAMPLES = 1024
PER_RANK_BATCH_SIZE = 32
EPOCHS = 12
FEATURES = 8


def _dataset(rank: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The rank's shard of one linearly separable problem (same problem on every rank)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(GLOBAL_EXAMPLES, FEATURES)).astype("float32")
    y = (x @ rng.normal(size=FEATURES) > 0).astype("float32")
    assert GLOBAL_EXAMPLES % (size * PER_RANK_BATCH_SIZE) == 0, "every rank must run the same step count"
    return x[rank::size], y[rank::size]


def main(out_dir: str) -> None:
    hvd.init()
    rank, size = hvd.rank(), hvd.size()
    # A different seed per rank: without BroadcastGlobalVariablesCallback the ranks would diverge.
    keras.utils.set_random_seed(1000 + rank)
    x, y = _dataset(rank, size)

    model = keras.Sequential([
        keras.Input((FEATURES,)),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dense(1, activation="sigmoid"),
    ])
    initial_kernel_sum = float(np.sum(model.layers[0].get_weights()[0]))
    optimizer = hvd.DistributedOptimizer(keras.optimizers.SGD(learning_rate=BASE_LEARNING_RATE * size))
    model.compile(optimizer=optimizer, loss="binary_crossentropy", metrics=["accuracy"])
    history = model.fit(
        x, y,
        batch_size=PER_RANK_BATCH_SIZE,
        epochs=EPOCHS,
        shuffle=False,
        verbose=0,
        callbacks=[
            hvd.callbacks.BroadcastGlobalVariablesCallback(0),
            hvd.callbacks.MetricAverageCallback(),
        ],
    )

    result = {
        "rank": rank,
        "size": size,
        "local_rank": hvd.local_rank(),
        "local_size": hvd.local_size(),
        "learning_rate": float(keras.backend.get_value(model.optimizer.learning_rate)),
        "optimizer_class": type(model.optimizer).__name__,
        "initial_kernel_sum": initial_kernel_sum,
        "final_loss": float(history.history["loss"][-1]),
        "first_loss": float(history.history["loss"][0]),
        "final_accuracy": float(history.history["accuracy"][-1]),
        "weights": [w.ravel().tolist() for w in model.get_weights()],
    }
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1])
