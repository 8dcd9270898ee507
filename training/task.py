"""What every task shares: derived sizes, loss, metrics, compiling under the strategy, and
distributing a task's datasets.

The loop (training/loop.py) owns steps, evaluation cadence, checkpoints and logs; the task
(training/tasks/) says what is trained on what.
"""
from __future__ import annotations

import dataclasses
import math

from core.config import Config
from training.backends import Backend
from training.keras_compat import keras, tf
from training.optim import build_optimizer, build_schedule, scaled_lr


@dataclasses.dataclass(frozen=True)
class Plan:
    """Values derived once at start-up from the config, the data and the backend."""

    global_batch_size: int
    per_replica_batch_size: int
    num_replicas: int
    world_size: int
    steps_per_epoch: int
    validation_steps: int
    epochs: int
    peak_lr: float
    num_classes: int
    class_names: tuple[str, ...]
    train_examples: int
    val_examples: int

    def describe(self) -> str:
        return (f"{self.num_replicas} replicas over {self.world_size} process(es); global batch "
                f"{self.global_batch_size} = {self.per_replica_batch_size} per replica; "
                f"{self.steps_per_epoch} steps/epoch x {self.epochs} epochs; {self.validation_steps} "
                f"validation steps; peak lr {self.peak_lr:.6g}; {self.num_classes} classes; "
                f"{self.train_examples} train / {self.val_examples} val examples")


def make_plan(cfg: Config, backend: Backend, info) -> Plan:
    """Derives batch sizes, step counts and the peak learning rate in one place."""
    global_batch = cfg.data.batch_size
    per_replica = backend.per_replica_batch(global_batch)
    steps = cfg.train.steps_per_epoch or max(info.train_examples // global_batch, 1)
    val_steps = cfg.train.validation_steps or max(math.ceil(info.val_examples / global_batch), 1)
    return Plan(global_batch_size=global_batch, per_replica_batch_size=per_replica,
                num_replicas=backend.num_replicas, world_size=backend.world_size,
                steps_per_epoch=steps, validation_steps=val_steps, epochs=cfg.train.epochs,
                peak_lr=scaled_lr(cfg.optimizer, global_batch), num_classes=info.num_classes,
                class_names=tuple(info.class_names), train_examples=info.train_examples,
                val_examples=info.val_examples)


def set_precision(precision: str) -> None:
    policy = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}[precision]
    keras.mixed_precision.set_global_policy(policy)


def loss_and_metrics(cfg: Config):
    """Sparse labels normally; one-hot (for label smoothing) when smoothing is on."""
    smoothing = cfg.optimizer.label_smoothing
    if smoothing > 0:
        return (keras.losses.CategoricalCrossentropy(label_smoothing=smoothing),
                [keras.metrics.CategoricalAccuracy(name="accuracy"),
                 keras.metrics.TopKCategoricalAccuracy(k=5, name="top5")])
    return (keras.losses.SparseCategoricalCrossentropy(),
            [keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
             keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5")])


def build_compiled_model(cfg: Config, the_task, plan: Plan, backend: Backend, seed: int) -> keras.Model:
    """The task's model, schedule and optimizer created under the backend's strategy scope."""
    with backend.strategy.scope():
        model = the_task.build_model(plan, seed)
        schedule = build_schedule(cfg.schedule, plan.peak_lr, plan.steps_per_epoch, plan.epochs)
        optimizer = backend.wrap_optimizer(build_optimizer(cfg.optimizer, schedule))
        loss, metrics = loss_and_metrics(cfg)
        model.compile(optimizer=optimizer, loss=loss, metrics=metrics, jit_compile=cfg.train.jit_compile,
                      steps_per_execution=cfg.train.steps_per_execution)
    return model


def datasets(cfg: Config, the_task, plan: Plan, backend: Backend, seed: int):
    """Distributed train (endless) and validation (repeated, read for validation_steps) datasets.

    Validation repeats so every worker runs the same number of steps, which collectives need
    when file shards hold different numbers of examples.
    """
    one_hot = cfg.optimizer.label_smoothing > 0

    def finish(ds):
        if one_hot:
            ds = ds.map(lambda x, y: (x, tf.one_hot(y, plan.num_classes)),
                        num_parallel_calls=tf.data.AUTOTUNE)
        return ds

    def train_fn(context):
        return finish(the_task.build_dataset("train", True, plan.per_replica_batch_size, context, seed))

    def val_fn(context):
        ds = the_task.build_dataset("val", False, plan.per_replica_batch_size, context, seed)
        return finish(ds.repeat())

    return backend.distribute(train_fn), backend.distribute(val_fn)
