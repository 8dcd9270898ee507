"""Trainer overhead: the project's training loop against a bare `model.fit` of the same model.

    python -m bench.trainer_overhead [--steps-per-epoch 15] [--epochs 4] [--rounds 4]

project: `training.loop.train` as a job runs it (the mirrored backend, on this one CPU device
    TensorFlow's default strategy, as a bare fit; the run recorder with its checkpoints, history,
    status, LR log and live curves; TensorBoard; the stop and step-checkpoint votes), on
    synthetic data, writing into a temporary run directory. The live curves are drawn by a helper
    process at nice 19: its CPU time is not in the process's, and is reported per run as
    `helper_cpu_s`.
bare: the same model (`training.models.build_model`), optimizer, loss, metrics, synthetic
    dataset, batch and validation steps, trained with `model.fit` and no callbacks.
Both run the same epochs of the same steps; the first epoch (tracing) is excluded. Runs
alternate project, bare, bare, project, project, bare, bare, project; every later epoch is a
sample (twelve per side by default) and the fastest of each side is compared; the ratio of the
medians is reported beside it. Before each run the page cache is written back (`os.sync`), so
files a benchmark before this one left dirty are not flushed during one side's epochs. An epoch
clock (epoch begin and end, the end of training; nothing per step) splits each epoch into its
steps (training and validation) and the work done between epochs (checkpoints, plots), so the
fixed per-epoch cost can be told apart from any per-step cost.
Figure: project steps/s / bare steps/s, goal >= 0.97; reported: steps per CPU-second of the
process, for whole epochs and inside epochs only. When the goal is missed, one more project run
under cProfile says which callbacks the time went to.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Figure, log, ratio_figure, report
from core.config import Config


def bench_config(size: int, batch: int, steps: int, epochs: int, validation_steps: int,
                 log_every: int, model: str) -> Config:
    cfg = Config()
    cfg.data.source = "synthetic"
    cfg.data.image_size = size
    cfg.data.batch_size = batch
    cfg.data.synthetic_classes = 10
    cfg.data.synthetic_examples = steps * batch
    cfg.model.name = model
    cfg.model.weights = None
    cfg.model.head_units = [128]
    cfg.model.dropout = 0.2
    cfg.model.channel_order = "rgb"
    cfg.model.mean = [127.5] * 3
    cfg.model.std = [127.5] * 3
    cfg.optimizer.name = "sgd"
    cfg.optimizer.lr = 0.01
    cfg.train.epochs = epochs
    cfg.train.steps_per_epoch = steps
    cfg.train.validation_steps = validation_steps
    cfg.train.log_every_steps = log_every
    cfg.runtime.backend = "mirrored"
    cfg.runtime.cluster = "local"
    return cfg


def _epoch_clock():
    """A callback that only notes when epochs begin and end and when training ends."""
    from training.keras_compat import keras

    class EpochClock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.begins: list[tuple[float, float]] = []  # (wall, process CPU) seconds
            self.ends: list[tuple[float, float]] = []
            self.train_end = (0.0, 0.0)

        @staticmethod
        def _now() -> tuple[float, float]:
            return time.perf_counter(), time.process_time()

        def on_epoch_begin(self, epoch, logs=None):
            self.begins.append(self._now())

        def on_epoch_end(self, epoch, logs=None):
            self.ends.append(self._now())

        def on_train_end(self, logs=None):
            self.train_end = self._now()

        def timings(self, steps: int) -> dict:
            """Per epoch after the first: wall and CPU seconds, split into the epoch's steps
            (training and validation) and the work between epochs (checkpoints, plots).

            Placed first in the callback list, the clock sees an epoch begin before any other
            callback and its end before the others' epoch-end work, so the time from one
            epoch's end to the next one's begin is that work.
            """
            nexts = self.begins[2:] + [self.train_end]
            epochs = list(zip(self.begins[1:], self.ends[1:], nexts))
            wall = [n[0] - b[0] for b, _, n in epochs]
            return {"epoch_s": wall, "steps_phase_s": [e[0] - b[0] for b, e, _ in epochs],
                    "between_epochs_s": [n[0] - e[0] for _, e, n in epochs],
                    "epoch_cpu_s": [n[1] - b[1] for b, _, n in epochs],
                    "steps_phase_cpu_s": [e[1] - b[1] for b, e, _ in epochs],
                    "steps_per_s": len(wall) * steps / sum(wall)}

    return EpochClock()


def run_project(cfg: Config, steps: int) -> dict:
    """One `training.loop.train` run in a fresh run directory."""
    from training.backends import MirroredBackend
    from training.cluster import cluster_from_env
    from training.keras_compat import keras
    from training.loop import train

    clock = _epoch_clock()

    class ClockedBackend(MirroredBackend):  # the backend hook is the loop's one extension point
        def callbacks(self):
            return [clock, *super().callbacks()]

    keras.backend.clear_session()
    run_dir = Path(tempfile.mkdtemp(prefix="bench-run-"))
    children = _children_cpu_s()
    try:
        backend = ClockedBackend(cluster_from_env({}), cfg.runtime)  # {}: this process alone
        with contextlib.redirect_stdout(sys.stderr):  # the loop's epoch lines are progress
            train(cfg, run_dir, backend)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return {**clock.timings(steps), "helper_cpu_s": _children_cpu_s() - children}


def _children_cpu_s() -> float:
    """CPU seconds of this process's finished children (the curve helper, once it is waited for)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_bare(cfg: Config, steps: int) -> dict:
    """The same model, optimizer, loss, metrics and data with a plain `model.fit`."""
    from training import task
    from training.data.pipeline import build_dataset
    from training.keras_compat import keras
    from training.models import build_model
    from training.optim import build_optimizer, build_schedule, scaled_lr

    keras.backend.clear_session()
    seed = cfg.train.seed
    keras.utils.set_random_seed(seed)
    batch, classes = cfg.data.batch_size, cfg.data.synthetic_classes
    model = build_model(cfg.model, cfg.augment, cfg.data.image_size, classes, seed=seed)
    schedule = build_schedule(cfg.schedule, scaled_lr(cfg.optimizer, batch), steps, cfg.train.epochs)
    loss, metrics = task.loss_and_metrics(cfg)
    model.compile(optimizer=build_optimizer(cfg.optimizer, schedule), loss=loss, metrics=metrics)
    train_ds = build_dataset(cfg.data, "train", True, batch, None, seed)
    val_ds = build_dataset(cfg.data, "val", False, batch, None, seed).repeat()
    clock = _epoch_clock()
    model.fit(train_ds, epochs=cfg.train.epochs, steps_per_epoch=steps, validation_data=val_ds,
              validation_steps=cfg.train.validation_steps, callbacks=[clock], verbose=0)
    return clock.timings(steps)


def profile_project(cfg: Config, steps: int, top: int = 12) -> dict:
    """One more project run under cProfile: where the loop's own Python time goes.

    Returns the cumulative seconds and call counts over the whole run (every epoch, the first
    included) of the loop's callbacks and what they call: checkpoint saving, curve plotting,
    TensorBoard, the LR log.
    """
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        run_project(cfg, steps)
    finally:
        profiler.disable()
    wanted = ("training/", "tf_keras/src/callbacks.py", "h5py/", "matplotlib/backends/")
    rows = []
    for (file, _, func), (_, calls, _, cumulative, _) in pstats.Stats(profiler).stats.items():
        if any(w in file for w in wanted) and func not in ("<module>", "train", "<lambda>"):
            short = file.split("site-packages/")[-1].split("training/", 1)[-1] if "site-packages/" in file \
                else "training/" + file.split("training/", 1)[-1]
            rows.append((cumulative, f"{short}:{func}", calls))
    rows.sort(reverse=True)
    return {"epochs": cfg.train.epochs, "cumulative_s": {name: round(cum, 3) for cum, name, _ in rows[:top]},
            "calls": {name: calls for _, name, calls in rows[:top]}}


def measure(cfg: Config, steps: int, rounds: int) -> dict:
    results = {"project": [], "bare": []}
    pair = [("project", run_project), ("bare", run_bare)]
    for r in range(rounds):
        # project, bare, bare, project, ...: whatever one run leaves behind (files being
        # written back, memory being freed) slows the next one, and each side goes second as often.
        for name, fn in pair if r % 2 == 0 else pair[::-1]:
            gc.collect()
            os.sync()
            timing = fn(cfg, steps)
            results[name].append({k: _rounded(v) for k, v in timing.items()})
            log(f"trainer round {r + 1}/{rounds}: {name:<7} {timing['steps_per_s']:.3f} steps/s; per epoch: "
                f"steps {_rounded(timing['steps_phase_s'])} s, between epochs "
                f"{_rounded(timing['between_epochs_s'])} s, CPU {_rounded(timing['epoch_cpu_s'])} s")
    return results


def _rounded(value):
    return [round(v, 4) for v in value] if isinstance(value, list) else round(value, 4)


def figures(results: dict, steps: int) -> list[Figure]:
    """Every measured epoch of every run is one sample; the fastest of each side is compared."""
    def fastest(side: str, key: str) -> float:
        return min(v for run in results[side] for v in run[key])

    def median(side: str, key: str) -> float:
        return statistics.median(v for run in results[side] for v in run[key])

    epoch = {side: fastest(side, "epoch_s") for side in results}
    inside = {side: fastest(side, "steps_phase_s") for side in results}
    cpu = {side: fastest(side, "epoch_cpu_s") for side in results}
    cpu_inside = {side: fastest(side, "steps_phase_cpu_s") for side in results}
    fixed = fastest("project", "between_epochs_s") - fastest("bare", "between_epochs_s")
    step_s = inside["bare"] / steps
    samples = {"runs": results, "steps_per_epoch": steps, "per_epoch_fixed_cost_s": round(fixed, 4),
               "bare_step_s": round(step_s, 5),
               "steps_only_wall_ratio": round(inside["bare"] / inside["project"], 4),
               # How long an epoch must be for the fixed cost alone to stay within 3 %.
               "steps_per_epoch_for_0.97": round(fixed / (step_s * 0.03 / 0.97)) if fixed > 0 else 0}
    return [
        ratio_figure("trainer.project_vs_bare_fit", steps / epoch["project"], steps / epoch["bare"],
                     "steps/s", 0.97, f"training.loop.train vs bare model.fit, {steps} steps/epoch, "
                     "first epoch excluded, fastest epoch of each", samples),
        ratio_figure("trainer.project_vs_bare_fit_median", steps / median("project", "epoch_s"),
                     steps / median("bare", "epoch_s"), "steps/s", None,
                     "the same, median epoch of each (reported beside the goal's fastest-of)", samples),
        ratio_figure("trainer.cpu_per_step", steps / cpu["project"], steps / cpu["bare"], "steps/cpu-s", None,
                     "steps per CPU-second of the process, whole epochs, fastest of each", samples),
        ratio_figure("trainer.cpu_per_step_in_epoch", steps / cpu_inside["project"], steps / cpu_inside["bare"],
                     "steps/cpu-s", None, "the same inside epochs only (no checkpoints or plots)", samples),
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.trainer_overhead", description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--model", default="small_cnn", help="registry name (default small_cnn)")
    parser.add_argument("--image-size", type=int, default=64, help="pixels (default 64)")
    parser.add_argument("--batch", type=int, default=32, help="global batch (default 32)")
    parser.add_argument("--steps-per-epoch", type=int, default=15, help="default 15")
    parser.add_argument("--epochs", type=int, default=4, help="including the excluded first (default 4)")
    parser.add_argument("--validation-steps", type=int, default=1, help="per epoch, both runs (default 1)")
    parser.add_argument("--log-every-steps", type=int, default=10,
                        help="TensorBoard and LR log cadence of the project run (default 10)")
    parser.add_argument("--rounds", type=int, default=4, help="project/bare pairs (default 4)")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch is excluded")
    cfg = bench_config(args.image_size, args.batch, args.steps_per_epoch, args.epochs,
                       args.validation_steps, args.log_every_steps, args.model)
    results = measure(cfg, args.steps_per_epoch, args.rounds)
    result = figures(results, args.steps_per_epoch)
    if result[0].passed is False:
        result[0].evidence = profile_project(cfg, args.steps_per_epoch)
        log(f"where the project run's extra time goes (cProfile, whole run): {result[0].evidence}")
    report(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
