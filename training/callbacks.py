"""Keras callbacks of the loop: checkpoints, history, status, per-step LR and stop requests.

Only the chief writes files; where a step needs every worker (saving under
MultiWorkerMirrored, agreeing to stop), all workers run the callback and the file writes are
guarded by `backend.is_chief`.
"""
from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path

from core import rundir
from core.fsutil import atomic_write_text
# TF-free, so the batch script can also write a killed run's end state; here only the chief calls it.
from core.runstatus import write_status  # also imported from here by training.loop and main
from training import signals
from training.backends import Backend
from training.checkpoints import CheckpointManager
from training.keras_compat import keras

HISTORY_FIELDS = ("epoch", "loss", "accuracy", "top5", "val_loss", "val_accuracy", "val_top5", "lr",
                  "images_per_sec", "epoch_time_s")


def write_history(run_dir: Path, rows: list[dict]) -> None:
    out = io.StringIO()
    writer = csv.DictWriter(out, HISTORY_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(Path(run_dir) / rundir.HISTORY, out.getvalue())


def current_lr(model: keras.Model) -> float:
    opt = model.optimizer
    lr = opt.learning_rate
    if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
        return float(lr(opt.iterations))
    return float(keras.backend.get_value(lr))


class RunRecorder(keras.callbacks.Callback):
    """End of each epoch: best and latest checkpoints, history.csv, status.json, curves."""

    def __init__(self, run_dir: Path, backend: Backend, checkpoints: CheckpointManager, plan,
                 state: dict | None, on_epoch_written=None, stopper=None):
        super().__init__()
        self.stopper = stopper
        self.run_dir = Path(run_dir)
        self.backend = backend
        self.checkpoints = checkpoints
        self.plan = plan
        state = state or {}
        self.history: list[dict] = list(state.get("history", []))
        self.best_val_loss = state.get("best_val_loss", math.inf)
        self.on_epoch_written = on_epoch_written
        self._epoch_start = 0.0
        self._epoch_first_step = 0

    def state(self, epoch_done: int, step: int, partial: bool = False) -> dict:
        best_acc = max((r["val_accuracy"] for r in self.history), default=None)
        return {"epoch": epoch_done, "step": step, "partial_epoch": partial,
                "steps_per_epoch": self.plan.steps_per_epoch,
                "best_val_loss": self.best_val_loss, "best_val_accuracy": best_acc,
                "history": self.history}

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.time()
        # An epoch resumed mid-way runs only its remaining steps; the speed counts those.
        self._epoch_first_step = int(self.model.optimizer.iterations.numpy())

    def on_epoch_end(self, epoch, logs=None):
        if self.stopper is not None and self.stopper.stopped_at is not None:
            return  # the epoch was cut short by a stop request; the loop saves a partial checkpoint
        logs = logs or {}
        seconds = time.time() - self._epoch_start
        step = int(self.model.optimizer.iterations.numpy())
        steps_run = step - self._epoch_first_step
        row = {"epoch": epoch + 1, "lr": current_lr(self.model), "epoch_time_s": round(seconds, 3),
               "images_per_sec": round(steps_run * self.plan.global_batch_size / seconds, 2)}
        row.update({k: float(logs[k]) for k in HISTORY_FIELDS if k in logs})
        self.history = [r for r in self.history if r["epoch"] < epoch + 1] + [row]
        val_loss = row.get("val_loss", math.inf)
        if val_loss < self.best_val_loss:  # the same value on every worker: metrics are reduced
            self.best_val_loss = val_loss
            self.checkpoints.save_best(self.model)
        state = self.state(epoch + 1, step)
        self.checkpoints.save_latest(self.model, state)
        if self.backend.is_chief:
            write_history(self.run_dir, self.history)
            write_status(self.run_dir, state="running", epoch=epoch + 1, epochs=self.plan.epochs,
                         best_val_accuracy=state["best_val_accuracy"])
            if self.on_epoch_written:
                self.on_epoch_written()


class StepLogger(keras.callbacks.Callback):
    """Appends the learning rate every `every` steps to lr.csv (chief) for the live LR plot."""

    def __init__(self, run_dir: Path, every: int):
        super().__init__()
        self._supports_tf_logs = True  # never converts the step's logs to numpy
        self.path = Path(run_dir) / rundir.LR_LOG
        self.every = max(every, 1)
        self._seen = 0

    def on_train_begin(self, logs=None):
        self._seen = int(self.model.optimizer.iterations.numpy())
        if not self.path.is_file():
            self.path.write_text("step,lr\n")
            return
        # A run killed after its last checkpoint logged steps that the resumed run does again,
        # perhaps the last one torn in the middle of its line.
        lines = self.path.read_text().splitlines(keepends=True)
        kept = lines[:1] + [line for line in lines[1:] if line.endswith("\n")
                            and line.split(",")[0].isdigit() and int(line.split(",")[0]) <= self._seen]
        if len(kept) < len(lines):
            atomic_write_text(self.path, "".join(kept))

    def on_train_batch_end(self, batch, logs=None):
        self._seen += 1
        if self._seen % self.every == 0:
            with self.path.open("a") as fh:
                fh.write(f"{self._seen},{current_lr(self.model):.8g}\n")


class StopOnSignal(keras.callbacks.Callback):
    """Turns SIGUSR1 (SLURM's warning before the time limit) and SIGTERM (preemption, scancel)
    into a coordinated stop: every worker finishes its step, agrees at the same step, the loop
    saves a resumable checkpoint and ends.

    Workers agree every `check_every` steps through a collective, so all of them stop at the
    same step and none is left waiting inside an all-reduce.
    """

    def __init__(self, backend: Backend, check_every: int = 10):
        super().__init__()
        self._supports_tf_logs = True
        self.backend = backend
        self.check_every = max(check_every, 1)
        self.stopped_at: tuple[int, int] | None = None  # (epoch, step) of an agreed stop
        self._epoch = 0
        self._batches = 0
        signals.install()  # already done by training.main; here for other callers of the loop

    @property
    def requested(self) -> bool:
        """This process got a stop signal."""
        return bool(signals.first_received())

    @property
    def signal_name(self) -> str:
        """Which one: SIGUSR1 means the time limit is near, so the job requeues itself."""
        return signals.first_received()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self._batches += 1
        if self._batches % self.check_every:
            return
        if self.backend.any_worker(self.requested):
            self.stopped_at = (self._epoch, int(self.model.optimizer.iterations.numpy()))
            self.model.stop_training = True


class StepCheckpoint(keras.callbacks.Callback):
    """Mid-epoch resumable checkpoints every `every_steps` optimizer steps and every
    `every_minutes` of wall clock (0 turns either off), written like the end-of-epoch ones.

    Saving is a collective under MultiWorkerMirrored, so every worker must decide to save at the
    same step. The step trigger reads the step counter, which all workers share. The time
    trigger is the chief's clock alone: every `check_every` steps the chief's "due" travels to
    the others through `backend.any_worker`, the same agreement collective as stop requests
    (the others vote no). The clock restarts at every checkpoint, end-of-epoch ones included.
    The last step of an epoch is left to the end-of-epoch checkpoint that follows it, and a step
    where a stop was agreed to the loop, which saves then.

    Args:
        clock: seconds, monotonic; tests pass a fake one.
        log: called with one line on the chief after each save.
    """

    def __init__(self, backend: Backend, checkpoints: CheckpointManager, recorder: RunRecorder,
                 every_steps: int = 0, every_minutes: float = 0.0, stopper: StopOnSignal | None = None,
                 check_every: int = 10, clock=time.monotonic, log=None):
        super().__init__()
        self._supports_tf_logs = True  # never converts the step's logs to numpy
        self.backend = backend
        self.checkpoints = checkpoints
        self.recorder = recorder
        self.every_steps = every_steps
        self.every_seconds = every_minutes * 60
        self.stopper = stopper
        self.check_every = max(check_every, 1)
        self.clock = clock
        self.log = log
        self.saved_steps: list[int] = []
        self._epoch = 0
        self._step = 0  # the optimizer's step, counted here: reading it each step would sync
        self._batches = 0
        self._last_save = 0.0

    @property
    def active(self) -> bool:
        return bool(self.every_steps or self.every_seconds)

    def on_train_begin(self, logs=None):
        self._step = int(self.model.optimizer.iterations.numpy())
        self._last_save = self.clock()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        self._last_save = self.clock()  # the end-of-epoch checkpoint was just written

    def _due(self) -> bool:
        """The same answer on every worker; a collective when the time trigger is on."""
        if self.every_steps and self._step % self.every_steps == 0:
            return True
        if not self.every_seconds or self._batches % self.check_every:
            return False
        late = self.backend.is_chief and self.clock() - self._last_save >= self.every_seconds
        return self.backend.any_worker(late)

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        self._batches += 1
        if self._step % self.recorder.plan.steps_per_epoch == 0:
            return
        if self.stopper is not None and self.stopper.stopped_at is not None:
            return
        if not self._due():
            return
        state = self.recorder.state(self._epoch, self._step, partial=True)
        name = self.checkpoints.save_latest(self.model, state)
        self._last_save = self.clock()
        self.saved_steps.append(self._step)
        if self.backend.is_chief and self.log is not None:
            self.log(f"step checkpoint: saved {name} in epoch {self._epoch + 1} at step {self._step}")


class RunTensorBoard(keras.callbacks.TensorBoard):
    """TensorBoard that leaves out an epoch cut short by a stop request, so a resumed run
    continues the curves without a duplicate point at that epoch. Each epoch's points are
    flushed at once: after a hard kill the resumed run continues from the last checkpoint, and
    curves with points still in the writer's queue (flushed every 2 minutes by default) would
    have a gap."""

    def __init__(self, stopper: StopOnSignal, **kwargs):
        super().__init__(**kwargs)
        self.stopper = stopper

    def on_epoch_end(self, epoch, logs=None):
        if self.stopper.stopped_at is None:
            super().on_epoch_end(epoch, logs)
            for writer in self._writers.values():  # tf-keras private; the kill test reads the points
                writer.flush()
