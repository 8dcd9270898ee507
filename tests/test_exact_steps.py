"""Exactly-once steps on every boundary: a run stopped at any step and resumed trains each step
once, and its history has each epoch once; with `train.steps_per_execution` too.

In-process, without SLURM: `training.loop.train` on a tiny model and synthetic images, stopped by
a real SIGUSR1 timed so that the workers' vote lands on the step wanted, then resumed in the
same run directory, as a requeued job would be.
"""
from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import pytest

STEPS_PER_EPOCH, EPOCHS = 4, 2  # every step of two epochs: mid-epoch, each epoch's end, the next start
TOTAL = STEPS_PER_EPOCH * EPOCHS

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def stop_signals(monkeypatch):
    """Every check a vote, a fresh signal record per test, and this process's handlers back after."""
    from training import callbacks, signals

    saved = {sig: signal.getsignal(sig) for sig in signals.SIGNALS}
    monkeypatch.setattr(callbacks, "CHECK_EVERY_STEPS", 1)
    monkeypatch.setattr(signals, "_received", [])
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def tiny_config(steps_per_execution: int = 1, steps_per_epoch: int = STEPS_PER_EPOCH, epochs: int = EPOCHS,
                checkpoint_every_steps: int = 0):
    from core.config import Config

    cfg = Config()
    cfg.data.source = "synthetic"
    cfg.data.image_size = 8
    cfg.data.batch_size = 4
    cfg.data.synthetic_classes = 10
    cfg.data.synthetic_examples = 32
    cfg.model.name = "small_cnn"
    cfg.model.weights = None
    cfg.model.head_units = [8]
    cfg.model.dropout = 0.0
    cfg.model.mean = [127.5] * 3
    cfg.model.std = [127.5] * 3
    cfg.optimizer.name = "sgd"
    cfg.optimizer.lr = 0.01
    cfg.train.epochs = epochs
    cfg.train.steps_per_epoch = steps_per_epoch
    cfg.train.validation_steps = 1
    cfg.train.log_every_steps = 1
    cfg.train.steps_per_execution = steps_per_execution
    cfg.train.checkpoint_every_steps = checkpoint_every_steps
    cfg.runtime.backend = "mirrored"
    cfg.runtime.cluster = "local"
    return cfg


class Crash(RuntimeError):
    """A kill -9 in the middle of a step, as far as the run directory can tell."""


def run(cfg, run_dir: Path, ask_stop_at: int | None = None, crash_at: int | None = None):
    """One `train` call. Returns its result and the optimizer steps it trained, in order.

    `ask_stop_at`: the step after which this process gets SIGUSR1 (-1: before the first step).
    The vote started then is read at the next callback, where the stop lands.
    `crash_at`: the step after which the run dies without saving anything.
    """
    from training import signals
    from training.backends import MirroredBackend
    from training.cluster import cluster_from_env
    from training.keras_compat import keras
    from training.loop import train

    trained: list[int] = []

    class Watch(keras.callbacks.Callback):
        """First in the list: sees each step before the loop's own callbacks do."""

        def on_train_begin(self, logs=None):
            self.last = int(self.model.optimizer.iterations.numpy())
            if ask_stop_at == -1 and not signals.first_received():
                os.kill(os.getpid(), signal.SIGUSR1)

        def on_train_batch_end(self, batch, logs=None):
            step = int(self.model.optimizer.iterations.numpy())
            trained.extend(range(self.last + 1, step + 1))
            self.last = step
            if step == crash_at:
                raise Crash(f"killed after step {step}")
            if step == ask_stop_at:
                os.kill(os.getpid(), signal.SIGUSR1)

    class WatchedBackend(MirroredBackend):
        def callbacks(self):
            return [Watch(), *super().callbacks()]

    keras.backend.clear_session()
    signals._received.clear()  # a new process for each run, as far as signals go
    backend = WatchedBackend(cluster_from_env({}), cfg.runtime)
    try:
        result = train(cfg, run_dir, backend)
    except Crash:
        result = None
    return result, trained


def latest(run_dir: Path) -> dict:
    return json.loads((run_dir / "checkpoints" / "latest.json").read_text())


def history_epochs(run_dir: Path) -> list[int]:
    with open(run_dir / "history.csv") as fh:
        return [int(row["epoch"]) for row in csv.DictReader(fh)]


def lr_steps(run_dir: Path) -> list[int]:
    return [int(line.split(",")[0]) for line in (run_dir / "lr.csv").read_text().splitlines()[1:]]


def tensorboard_points(run_dir: Path) -> dict[str, list[int]]:
    """Steps of the batch-level and epoch-level training loss points, duplicates kept."""
    from test_step_checkpoints import tensorboard_steps

    folder = run_dir / "tensorboard" / "train"
    return {tag: tensorboard_steps(folder, tag) for tag in ("batch_loss", "epoch_loss")}


def stop_chain(cfg, run_dir: Path, stops: list[int], every: int) -> list[int]:
    """Stops at each step of `stops` in turn, each resumed from the one before, then finishes.
    A stop at s + `every` (the first callback of a run resumed at s) is asked for before its
    first step; a later one at the callback before it. Returns the steps trained, in order."""
    trained, start = [], 0
    for stop in stops:
        ask = -1 if stop == start + every else stop - every
        result, steps = run(cfg, run_dir, ask_stop_at=ask)
        assert result is not None and result["state"] == "stopped", result
        assert result["step"] == stop, (stop, result["step"])
        end_of_epoch = stop % cfg.train.steps_per_epoch == 0
        state = latest(run_dir)
        assert (state["step"], state["partial_epoch"]) == (stop, not end_of_epoch), state
        done = stop // cfg.train.steps_per_epoch
        assert result["epoch"] == state["epoch"] == done
        assert history_epochs(run_dir) == list(range(1, done + 1)), stop
        assert [row["epoch"] for row in state["history"]] == list(range(1, done + 1))
        trained += steps
        start = stop
    result, steps = run(cfg, run_dir)
    assert result["state"] == "completed"
    return trained + steps


@pytest.mark.parametrize("first_stop", [1, 2])
def test_a_stop_at_any_step_resumes_without_redoing_a_finished_step(tmp_path, first_stop, capsys):
    """Two chains of stops two steps apart, from step 1 and from step 2: together a stop at every
    step of 2 epochs x 4 steps, mid-epoch and on each epoch's last step."""
    cfg = tiny_config()
    stops = list(range(first_stop, TOTAL + 1, 2))
    trained = stop_chain(cfg, tmp_path, stops, every=1)
    assert trained == list(range(1, TOTAL + 1))  # each step exactly once
    assert history_epochs(tmp_path) == list(range(1, EPOCHS + 1))
    assert lr_steps(tmp_path) == list(range(1, TOTAL + 1))
    # TensorBoard too: a point per step (log_every_steps 1) and per epoch, each once.
    assert tensorboard_points(tmp_path) == {"batch_loss": list(range(1, TOTAL + 1)), "epoch_loss": list(range(EPOCHS))}
    out = capsys.readouterr().out
    assert "restarts from its beginning" not in out
    # A stop on an epoch's last step is that epoch's end: the next run starts the next epoch.
    if first_stop == 2:
        assert "stop requested: saved a resumable checkpoint at the end of epoch 1, step 4" in out
        assert "resumed from latest-000000004.h5: 1 epochs done, step 4\n" in out


@pytest.mark.parametrize("first_stop", [2, 4])
def test_steps_per_execution_stops_at_an_agreed_multiple_and_resumes_exactly(tmp_path, first_stop, capsys):
    """With 2 steps per call, callbacks and so stops come every 2 steps: chains from step 2 and
    from step 4, 4 steps apart, stop at every even step, mid-epoch and at each epoch's end."""
    cfg = tiny_config(steps_per_execution=2)
    trained = stop_chain(cfg, tmp_path, list(range(first_stop, TOTAL + 1, 4)), every=2)
    assert trained == list(range(1, TOTAL + 1))
    assert history_epochs(tmp_path) == list(range(1, EPOCHS + 1))
    assert lr_steps(tmp_path) == list(range(1, TOTAL + 1))
    # Batch-level points where Keras calls back, every 2 steps.
    assert tensorboard_points(tmp_path) == {"batch_loss": list(range(2, TOTAL + 1, 2)), "epoch_loss": list(range(EPOCHS))}
    assert "stop requests checked every 2 steps" in capsys.readouterr().out


def test_steps_per_execution_step_checkpoints_land_on_multiples_and_resume(tmp_path, capsys):
    """checkpoint_every_steps 3 with 2 steps per call saves every 4 steps (and says so); a run
    killed after step 10 resumes at its step-8 checkpoint and redoes only what the kill lost."""
    cfg = tiny_config(steps_per_execution=2, steps_per_epoch=6, epochs=2, checkpoint_every_steps=3)
    result, trained = run(cfg, tmp_path, crash_at=10)
    assert result is None and trained == list(range(1, 11))
    out = capsys.readouterr().out
    assert ("step checkpoints every 4 steps; train.steps_per_execution 2: callbacks come every 2 steps, so "
            "stops and step checkpoints land on its multiples (train.checkpoint_every_steps 3 rounded up)") in out
    # Step 12 ends epoch 2 and gets the end-of-epoch checkpoint instead.
    assert "step checkpoint: saved latest-000000004.h5 in epoch 1 at step 4" in out
    assert "step checkpoint: saved latest-000000008.h5 in epoch 2 at step 8" in out
    state = latest(tmp_path)
    assert (state["step"], state["epoch"], state["partial_epoch"]) == (8, 1, True)
    assert lr_steps(tmp_path) == list(range(1, 9))  # none past the checkpoint

    result, resumed = run(cfg, tmp_path)
    assert result["state"] == "completed"
    assert resumed == [9, 10, 11, 12]
    assert "epoch 2 continues at step 8 (2 of its 6 steps done)" in capsys.readouterr().out
    assert history_epochs(tmp_path) == [1, 2]
    assert lr_steps(tmp_path) == list(range(1, 13))
    assert latest(tmp_path)["step"] == 12 and not latest(tmp_path)["partial_epoch"]
