"""Keras callbacks of the loop: the run's record at each epoch's end, and the decisions every
worker takes at the same step (stop on a signal, mid-epoch checkpoints).

Only the chief writes files; where a step needs every worker (saving under
MultiWorkerMirrored, agreeing to stop), all workers run the callback and the file writes are
guarded by `backend.is_chief`. Nothing here reads a value back from the device on every step:
per step there is a counter, and a vote between workers every few steps whose answer is read
one vote later.
"""
from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import dataclass
from pathlib import Path

from core import rundir
from core.fsutil import atomic_write_text
# TF-free, so the batch script can also write a killed run's end state; here only the chief calls it.
from core.runstatus import write_status  # also imported from here by training.loop and main
from training import signals
from training.backends import Backend
from training.checkpoints import CheckpointManager
from training.keras_compat import keras, tf

HISTORY_FIELDS = ("epoch", "loss", "accuracy", "top5", "val_loss", "val_accuracy", "val_top5", "lr",
                  "images_per_sec", "epoch_time_s")
CHECK_EVERY_STEPS = 10  # how often workers vote on stopping and on the chief's checkpoint clock


def write_history(run_dir: Path, rows: list[dict]) -> None:
    out = io.StringIO()
    writer = csv.DictWriter(out, HISTORY_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(Path(run_dir) / rundir.HISTORY, out.getvalue())


def current_lr(model: keras.Model) -> float:
    """The learning rate of the last step (the optimizer keeps it for a schedule)."""
    opt = model.optimizer
    lr = opt.learning_rate
    if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
        return float(lr(opt.iterations))
    return float(keras.backend.get_value(lr))


def schedule_of(optimizer) -> "keras.optimizers.schedules.LearningRateSchedule | float":
    """The optimizer's learning rate as a function of the step (its schedule) or its constant,
    rebuilt from its config, the public view of what it was compiled with."""
    value = optimizer.get_config()["learning_rate"]
    if isinstance(value, dict):
        return keras.optimizers.schedules.deserialize(value)
    return float(value)


class LrLog:
    """lr.csv: the learning rate that every `every`-th step trained with, for the live LR plot.

    Written by the chief whenever a checkpoint is saved, from the schedule, rather than read from
    the optimizer every few steps: the rows are the same, and no step waits for them. A row is
    written only once a checkpoint covers its step, so a resumed run never logs a step twice.
    """

    def __init__(self, run_dir: Path, every: int, schedule):
        self.path = Path(run_dir) / rundir.LR_LOG
        self.every = max(every, 1)
        self.schedule = schedule
        self._done = 0  # the step the rows are written up to

    def start(self, step: int) -> None:
        """At the step training starts from: drops rows past it, adds any missing before it."""
        if not self.path.is_file():
            self.path.write_text("step,lr\n")
        else:
            # Rows past the checkpoint (written by an older version, or torn by a kill) go.
            lines = self.path.read_text().splitlines(keepends=True)
            kept = lines[:1] + [line for line in lines[1:] if line.endswith("\n")
                                and line.split(",")[0].isdigit() and int(line.split(",")[0]) <= step]
            if len(kept) < len(lines):
                atomic_write_text(self.path, "".join(kept))
            self._done = max([int(line.split(",")[0]) for line in kept[1:]], default=0)
        self.extend_to(step)

    def extend_to(self, step: int) -> None:
        """Appends the rows of the steps after the last one written, up to `step`."""
        steps = list(range((self._done // self.every + 1) * self.every, step + 1, self.every))
        self._done = max(self._done, step)
        if not steps:
            return
        with self.path.open("a") as fh:
            fh.writelines(f"{s},{lr:.8g}\n" for s, lr in zip(steps, self.rates(steps)))

    def rates(self, steps: list[int]) -> list[float]:
        """The learning rate step s trained with: the schedule at s - 1, the optimizer's count then."""
        if not isinstance(self.schedule, keras.optimizers.schedules.LearningRateSchedule):
            return [float(self.schedule)] * len(steps)
        values = self.schedule(tf.constant([s - 1 for s in steps], tf.int64)).numpy().reshape(-1)
        if len(values) != len(steps):  # a schedule that does not take a vector of steps
            return [float(self.schedule(s - 1)) for s in steps]
        return [float(v) for v in values]


class RunRecorder(keras.callbacks.Callback):
    """End of each epoch: history.csv, the resumable and best checkpoints, status.json, lr.csv
    and a redraw of the curves. Every resumable checkpoint, mid-epoch ones included, is saved
    through `save_resumable`, so lr.csv follows each one."""

    def __init__(self, run_dir: Path, backend: Backend, checkpoints: CheckpointManager, plan,
                 state: dict | None, lr_log: LrLog | None = None, curves=None):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.backend = backend
        self.checkpoints = checkpoints
        self.plan = plan
        state = state or {}
        self.history: list[dict] = list(state.get("history", []))
        self.best_val_loss = state.get("best_val_loss", math.inf)
        self.lr_log = lr_log  # the chief's
        self.curves = curves  # the chief's training.report.curves.LiveCurves
        self.stopped_mid_epoch = False  # set by StopAndCheckpoint: the cut epoch gets no row
        self._epoch_start = 0.0
        self._epoch_first_step = 0

    def state(self, epoch_done: int, step: int, partial: bool = False) -> dict:
        best_acc = max((r["val_accuracy"] for r in self.history), default=None)
        return {"epoch": epoch_done, "step": step, "partial_epoch": partial,
                "steps_per_epoch": self.plan.steps_per_epoch,
                "best_val_loss": self.best_val_loss, "best_val_accuracy": best_acc,
                "history": self.history}

    def save_resumable(self, model: keras.Model, epoch_done: int, step: int, partial: bool,
                       best: bool = False) -> str:
        """Every worker calls it at the same step; returns the checkpoint's file name."""
        name = self.checkpoints.save_latest(model, self.state(epoch_done, step, partial), best=best)
        if self.lr_log is not None:
            self.lr_log.extend_to(step)
        return name

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.time()
        # An epoch resumed mid-way runs only its remaining steps; the speed counts those.
        self._epoch_first_step = int(self.model.optimizer.iterations.numpy())

    def on_epoch_end(self, epoch, logs=None):
        if self.stopped_mid_epoch:
            return  # StopAndCheckpoint saved the cut epoch at its step
        logs = logs or {}
        seconds = time.time() - self._epoch_start
        step = int(self.model.optimizer.iterations.numpy())
        steps_run = step - self._epoch_first_step
        row = {"epoch": epoch + 1, "lr": current_lr(self.model), "epoch_time_s": round(seconds, 3),
               "images_per_sec": round(steps_run * self.plan.global_batch_size / seconds, 2)}
        row.update({k: float(logs[k]) for k in HISTORY_FIELDS if k in logs})
        self.history = [r for r in self.history if r["epoch"] < epoch + 1] + [row]
        val_loss = row.get("val_loss", math.inf)
        best = val_loss < self.best_val_loss  # the same on every worker: metrics are reduced
        if best:
            self.best_val_loss = val_loss
        self.save_resumable(self.model, epoch + 1, step, partial=False, best=best)
        if self.backend.is_chief:
            write_history(self.run_dir, self.history)
            write_status(self.run_dir, state="running", epoch=epoch + 1, epochs=self.plan.epochs,
                         best_val_accuracy=self.state(epoch + 1, step)["best_val_accuracy"])
            if self.curves is not None:
                self.curves.update()


@dataclass(frozen=True)
class StopPoint:
    """Where every worker agreed to stop: the 0-based epoch, the optimizer step, and whether that
    step ends the epoch (then the epoch is recorded and saved like any other)."""

    epoch: int
    step: int
    end_of_epoch: bool

    @property
    def epochs_done(self) -> int:
        return self.epoch + 1 if self.end_of_epoch else self.epoch


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


class StopAndCheckpoint(keras.callbacks.Callback):
    """Decisions every worker takes at the same step: stop on a signal, and mid-epoch checkpoints.

    SIGUSR1 (SLURM's warning before the time limit) and SIGTERM (preemption, scancel) become a
    coordinated stop with a resumable checkpoint. `every_steps` optimizer steps and
    `every_minutes` of the chief's clock (0 turns either off) write mid-epoch checkpoints.

    Per step this only counts. Every `check_every` steps, and when training begins, each worker
    starts one vote (`backend.any_worker`) on (a stop signal arrived here, the chief's clock says
    a checkpoint is due) and reads the answer of the vote it started at the previous check,
    which has long finished: no step waits on it. A signal is thus acted on at the check after
    the one that saw it, at the same step on every worker, at most 2 x `check_every` steps
    later. The step trigger reads the step count, which all workers share, and needs no vote.
    The chief's clock restarts at every checkpoint, end-of-epoch ones included.

    With `steps_per_execution` N, Keras calls back only every N steps (and at each epoch's
    end), so `check_every` and `every_steps` are rounded up to multiples of N, and stops and
    step checkpoints land on those calls.

    A decision on an epoch's last step is left to the end of the epoch: a stop there lets the
    epoch be recorded and saved as usual (RunRecorder), and the resumed run starts with the next
    epoch. A stop mid-epoch saves at once, before Keras validates the cut epoch.

    Args:
        check_every: steps between votes; CHECK_EVERY_STEPS when None.
        clock: seconds, monotonic; tests pass a fake one.
        log: called with one line on the chief after each step checkpoint.
    """

    def __init__(self, backend: Backend, recorder: RunRecorder, every_steps: int = 0,
                 every_minutes: float = 0.0, steps_per_execution: int = 1,
                 check_every: int | None = None, clock=time.monotonic, log=None):
        super().__init__()
        self._supports_tf_logs = True  # never converts the step's logs to numpy
        self.backend = backend
        self.recorder = recorder
        self.steps_per_execution = max(steps_per_execution, 1)
        self._every_steps_asked = every_steps
        self.every_steps = _round_up(every_steps, self.steps_per_execution) if every_steps else 0
        self.every_seconds = every_minutes * 60
        self.check_every = _round_up(max(check_every or CHECK_EVERY_STEPS, 1), self.steps_per_execution)
        self.clock = clock
        self.log = log
        self.stopped_at: StopPoint | None = None
        self.saved_steps: list[int] = []  # mid-epoch checkpoints written
        self._epoch = 0
        self._epoch_first_step = 0
        self._step = 0
        self._vote = None  # reads the answer of the vote in flight
        self._saves = 0  # checkpoints written so far, end-of-epoch ones included
        self._saves_at_vote = 0
        self._last_save_time = 0.0
        signals.install()  # already done by training.main; here for other callers of the loop

    @property
    def requested(self) -> bool:
        """This process got a stop signal."""
        return bool(signals.first_received())

    @property
    def signal_name(self) -> str:
        """Which one: SIGUSR1 means the time limit is near, so the job requeues itself."""
        return signals.first_received()

    def describe(self) -> str:
        """Where stops and step checkpoints can land, for the log."""
        n, steps_per_epoch = self.steps_per_execution, self.recorder.plan.steps_per_epoch
        text = f"stop requests checked every {self.check_every} steps"
        if self.every_steps:
            text += f"; step checkpoints every {self.every_steps} steps"
        if n > 1:
            text += (f"; train.steps_per_execution {n}: callbacks come every {n} steps, so stops and step "
                     "checkpoints land on its multiples")
            if self.every_steps != self._every_steps_asked:
                text += f" (train.checkpoint_every_steps {self._every_steps_asked} rounded up)"
            if steps_per_epoch % n:
                text += (f"; steps_per_epoch {steps_per_epoch} is not one of them, so each epoch ends with a "
                         "shorter call and the calls after it end off those multiples")
        return text

    def _start_vote(self) -> None:
        late = (self.backend.is_chief and bool(self.every_seconds)
                and self.clock() - self._last_save_time >= self.every_seconds)
        self._vote = self.backend.any_worker((self.requested, late))
        self._saves_at_vote = self._saves

    def _saved(self) -> None:
        self._saves += 1
        self._last_save_time = self.clock()

    def on_train_begin(self, logs=None):
        self._step = int(self.model.optimizer.iterations.numpy())
        if self._vote is None:  # a second fit of the same run keeps the vote in flight
            self._last_save_time = self.clock()
            self._start_vote()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._epoch_first_step = self._step = int(self.model.optimizer.iterations.numpy())

    def on_epoch_end(self, epoch, logs=None):
        if self.stopped_at is None or self.stopped_at.end_of_epoch:
            self._saved()  # the end-of-epoch checkpoint is being written

    def on_train_batch_end(self, batch, logs=None):
        step = self._epoch_first_step + batch + 1  # batch: the last step of this call, in the epoch
        previous, self._step = self._step, step
        due = bool(self.every_steps) and step // self.every_steps > previous // self.every_steps
        check = step // self.check_every > previous // self.check_every
        if check:
            stop, late = self._vote()
            if stop:
                self._stop(step)
                return
            # A chief's "late" that a checkpoint has answered since the vote began is stale.
            due = due or (late and self._saves == self._saves_at_vote)
        if due and step % self.recorder.plan.steps_per_epoch:  # an epoch's end saves anyway
            name = self.recorder.save_resumable(self.model, self._epoch, step, partial=True)
            self._saved()
            self.saved_steps.append(step)
            if self.backend.is_chief and self.log is not None:
                self.log(f"step checkpoint: saved {name} in epoch {self._epoch + 1} at step {step}")
        if check:
            self._start_vote()

    def _stop(self, step: int) -> None:
        self.stopped_at = StopPoint(self._epoch, step, end_of_epoch=step % self.recorder.plan.steps_per_epoch == 0)
        self.model.stop_training = True
        if not self.stopped_at.end_of_epoch:
            self.recorder.stopped_mid_epoch = True
            self.recorder.save_resumable(self.model, self._epoch, step, partial=True)


class RunTensorBoard(keras.callbacks.TensorBoard):
    """TensorBoard that leaves out an epoch cut short by a stop request, so a resumed run
    continues the curves without a duplicate point at that epoch. Each epoch's points are
    flushed at once: after a hard kill the resumed run continues from the last checkpoint, and
    curves with points still in the writer's queue (flushed every 2 minutes by default) would
    have a gap.

    Batch-level points (`batch_loss`, ...) come every `update_freq` optimizer steps, decided by
    the step count in Python: the base class runs its record condition as TensorFlow ops for
    every metric on every step, and counts steps from 0 again in each `fit` call, so a resumed
    run wrote its points over the earlier steps. With `steps_per_execution` N they come at the
    first call at or after each multiple. (The loop turns off graph writing and profiling, the
    base hook's other work.)
    """

    def __init__(self, recorder: RunRecorder, **kwargs):
        super().__init__(**kwargs)
        self.recorder = recorder
        self._first_step = self._step = 0

    def _implements_train_batch_hooks(self):  # tf-keras private: whether Keras calls the batch hooks
        return self.update_freq != "epoch"

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        self._first_step = self._step = int(self.model.optimizer.iterations.numpy())

    def on_train_batch_end(self, batch, logs=None):
        step = self._first_step + batch + 1
        previous, self._step = self._step, step
        if self.update_freq == "epoch" or step // self.update_freq == previous // self.update_freq:
            return
        with tf.summary.record_if(True), self._train_writer.as_default():
            for name, value in (logs or {}).items():
                tf.summary.scalar("batch_" + name, value, step=step)

    def on_epoch_end(self, epoch, logs=None):
        if not self.recorder.stopped_mid_epoch:
            super().on_epoch_end(epoch, logs)
            for writer in self._writers.values():  # tf-keras private; the kill test reads the points
                writer.flush()
