"""Optimizers and learning-rate schedules.

Schedules work in optimizer steps. Epoch-valued settings in `ScheduleConfig` are converted to
steps once, in `build_schedule`, from the steps-per-epoch the loop derives at start-up.
"""
from __future__ import annotations

import math

from core.config import OptimizerConfig, ScheduleConfig
from training.keras_compat import keras, tf


def scaled_lr(opt: OptimizerConfig, global_batch_size: int) -> float:
    """Peak learning rate after the linear scaling rule (Goyal et al.), when enabled."""
    if not opt.scale_lr:
        return opt.lr
    return opt.lr * global_batch_size / opt.base_batch_size


@keras.utils.register_keras_serializable(package="training")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup to `peak_lr`, then one of the decay shapes below.

    - constant: stays at the peak.
    - cosine: half cosine from the peak to `min_lr` at `total_steps`.
    - step: multiplied by `step_factor` at each boundary in `boundaries` (steps).
    - smooth_decay: exponential, `peak * decay_rate ** (t / decay_steps)`, floored at `min_lr`.
    - cyclic_decay: cosine cycles of `cycle_steps` (warm restarts) from a top to `min_lr`; the
      top starts at the peak and is multiplied by `decay_rate` after every cycle.

    `t` counts steps after the warmup, so the decay shapes start at the peak.
    """

    def __init__(self, name: str, peak_lr: float, total_steps: int, warmup_steps: int = 0,
                 min_lr: float = 0.0, decay_rate: float = 0.5, decay_steps: int = 1,
                 cycle_steps: int = 1, boundaries: list[int] | None = None, step_factor: float = 0.1):
        super().__init__()
        self.name = name
        self.peak_lr = float(peak_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.min_lr = float(min_lr)
        self.decay_rate = float(decay_rate)
        self.decay_steps = max(int(decay_steps), 1)
        self.cycle_steps = max(int(cycle_steps), 2)
        self.boundaries = [int(b) for b in (boundaries or [])]
        self.step_factor = float(step_factor)

    def _constant(self, t: tf.Tensor) -> tf.Tensor:
        return tf.constant(self.peak_lr, tf.float32)

    def _cosine(self, t: tf.Tensor) -> tf.Tensor:
        peak, floor = self.peak_lr, self.min_lr
        span = float(max(self.total_steps - self.warmup_steps, 1))
        progress = tf.minimum(t / span, 1.0)
        return floor + (peak - floor) * 0.5 * (1.0 + tf.cos(math.pi * progress))

    def _step(self, t: tf.Tensor) -> tf.Tensor:
        passed = tf.add_n([tf.cast(t + self.warmup_steps >= b, tf.float32) for b in self.boundaries]
                          or [tf.constant(0.0)])
        return self.peak_lr * tf.pow(self.step_factor, passed)

    def _smooth_decay(self, t: tf.Tensor) -> tf.Tensor:
        return tf.maximum(self.peak_lr * tf.pow(self.decay_rate, t / self.decay_steps), self.min_lr)

    def _cyclic_decay(self, t: tf.Tensor) -> tf.Tensor:
        floor = self.min_lr
        cycle = tf.floor(t / self.cycle_steps)
        position = (t - cycle * self.cycle_steps) / self.cycle_steps  # 0..1 inside the cycle
        top = tf.maximum(self.peak_lr * tf.pow(self.decay_rate, cycle), floor)
        return floor + (top - floor) * 0.5 * (1.0 + tf.cos(math.pi * position))

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        t = tf.maximum(step - self.warmup_steps, 0.0)
        lr = SCHEDULE_SHAPES[self.name](self, t)
        if self.warmup_steps > 0:
            warm = self.peak_lr * (step + 1.0) / self.warmup_steps
            lr = tf.where(step < self.warmup_steps, warm, lr)
        return lr

    def get_config(self) -> dict:
        return {"name": self.name, "peak_lr": self.peak_lr, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "min_lr": self.min_lr,
                "decay_rate": self.decay_rate, "decay_steps": self.decay_steps,
                "cycle_steps": self.cycle_steps, "boundaries": self.boundaries,
                "step_factor": self.step_factor}


# core/registry.py SCHEDULES -> the decay shape after the warmup.
SCHEDULE_SHAPES = {"constant": WarmupDecay._constant, "cosine": WarmupDecay._cosine, "step": WarmupDecay._step,
                   "smooth_decay": WarmupDecay._smooth_decay, "cyclic_decay": WarmupDecay._cyclic_decay}


def build_schedule(sched: ScheduleConfig, peak_lr: float, steps_per_epoch: int,
                   epochs: int) -> WarmupDecay:
    """Converts the epoch-valued schedule settings to steps."""
    def steps(epochs_value: float) -> int:
        return int(round(epochs_value * steps_per_epoch))

    return WarmupDecay(
        name=sched.name, peak_lr=peak_lr, total_steps=steps_per_epoch * epochs,
        warmup_steps=steps(sched.warmup_epochs), min_lr=peak_lr * sched.min_lr_fraction,
        decay_rate=sched.decay_rate, decay_steps=steps(sched.decay_epochs),
        cycle_steps=steps(sched.cycle_epochs),
        boundaries=[steps(e) for e in sched.step_epochs], step_factor=sched.step_factor)


def _sgd(opt: OptimizerConfig, learning_rate, decay, clip):
    return keras.optimizers.SGD(learning_rate, momentum=opt.momentum, nesterov=opt.nesterov,
                                weight_decay=decay, **clip)


def _adam(opt: OptimizerConfig, learning_rate, decay, clip):
    return keras.optimizers.Adam(learning_rate, weight_decay=decay, **clip)


def _adamw(opt: OptimizerConfig, learning_rate, decay, clip):
    # AdamW requires a float; 0.0 makes it Adam.
    return keras.optimizers.AdamW(learning_rate, weight_decay=opt.weight_decay, **clip)


# core/registry.py OPTIMIZERS -> builder.
OPTIMIZER_BUILDERS = {"sgd": _sgd, "adam": _adam, "adamw": _adamw}


def build_optimizer(opt: OptimizerConfig, learning_rate) -> keras.optimizers.Optimizer:
    """The optimizer named in `opt`; `opt.weight_decay` is decoupled decay (see OptimizerConfig).

    `opt.clipnorm` clips each gradient to that L2 norm (after the all-reduce), 0 = off.
    """
    # None, not 0.0: tf-keras would otherwise still run a zero decay over every weight each step.
    decay = opt.weight_decay or None
    clip = {"clipnorm": opt.clipnorm} if opt.clipnorm > 0 else {}
    return OPTIMIZER_BUILDERS[opt.name](opt, learning_rate, decay, clip)
