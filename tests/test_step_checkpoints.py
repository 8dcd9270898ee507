"""Mid-epoch checkpoints every N steps or M minutes: a run killed hard (SIGKILL, a lost node)
resumes at the step of its last checkpoint, with history and TensorBoard continuous."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parent.parent
DEMO = str(REPO / "configs" / "demo.yaml")
# The SLURM test kills the trainer at a step checkpoint in epoch 2: the first (step 120) comes 60
# steps before the epoch ends, so the kill lands in time on a fast machine too (~30 ms a step).
STEPS_PER_EPOCH, EVERY_STEPS, EPOCHS = 90, 30, 3
SAVED = re.compile(r"step checkpoint: saved (latest-\d+\.h5) in epoch (\d+) at step (\d+)")


# --- the trigger, in-process -------------------------------------------------------------------

class FakeClock:
    """Seconds that move only when the test says so."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def advance(clock: FakeClock, seconds: float):
    """A callback that lets `seconds` pass on the fake clock after every step."""
    from training.keras_compat import keras

    def tick(batch, logs):
        clock.now += seconds

    return keras.callbacks.LambdaCallback(on_train_batch_end=tick)


def tiny_model():
    from training.keras_compat import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def fit_steps(model, callbacks: list, steps: int, epochs: int = 1) -> None:
    import numpy as np

    x, y = np.ones((steps * 2, 4), "float32"), np.zeros((steps * 2,), "int32")
    model.fit(x, y, batch_size=2, epochs=epochs, steps_per_epoch=steps, shuffle=False, verbose=0,
              callbacks=callbacks)


def trigger(backend, checkpoints, run_dir: Path, steps_per_epoch: int = 10, **kwargs):
    """A StopAndCheckpoint with a real RunRecorder for the state it saves."""
    from training.callbacks import RunRecorder, StopAndCheckpoint

    plan = SimpleNamespace(steps_per_epoch=steps_per_epoch, global_batch_size=2, epochs=2)
    return StopAndCheckpoint(backend, RunRecorder(run_dir, backend, checkpoints, plan, None), **kwargs)


class Answers:
    """A worker's backend whose votes come back as the test says: (stop, checkpoint due) per vote."""

    is_chief = False

    def __init__(self, answers):
        self.answers = iter(answers)
        self.votes = []

    def any_worker(self, flags):
        self.votes.append(flags)
        answer = next(self.answers)
        return lambda: answer


class SavedSteps:
    """Checkpoints that only note (epoch, step) of each save."""

    def __init__(self):
        self.saved = []

    def save_latest(self, model, state, best=False):
        self.saved.append((state["epoch"], state["step"]))
        return f"latest-{state['step']:09d}.h5"


def test_every_minutes_writes_a_resumable_checkpoint_on_the_chiefs_clock(tmp_path):
    from core.config import RuntimeConfig
    from training.backends import MirroredBackend
    from training.checkpoints import CheckpointManager
    from training.cluster import ClusterSpec
    from training.keras_compat import keras

    backend = MirroredBackend(ClusterSpec(0, 1, 0, ("localhost",), None, "localhost"), RuntimeConfig())
    checkpoints = CheckpointManager(tmp_path, backend)
    clock = FakeClock()
    model = tiny_model()
    every_minute = trigger(backend, checkpoints, tmp_path, every_minutes=1.0, check_every=1, clock=clock)
    # 25 s a step: the vote after step 3 finds a minute gone, and its answer, read after the next
    # step, saves at step 4; the clock restarts there, so again at step 8. Step 10 ends the epoch
    # and is left to the end-of-epoch checkpoint.
    fit_steps(model, [advance(clock, 25.0), every_minute], 10)
    assert every_minute.saved_steps == [4, 8]
    latest = json.loads((tmp_path / "checkpoints" / "latest.json").read_text())
    assert latest["partial_epoch"] and latest["epoch"] == 0 and latest["step"] == 8
    assert latest["steps_per_epoch"] == 10
    # It restores: weights and the step counter, which is where the resumed run continues.
    restored = tiny_model()
    checkpoints.restore(restored, checkpoints.load_state())
    assert int(restored.optimizer.iterations.numpy()) == 8
    for saved, now in zip(keras.models.load_model(tmp_path / "checkpoints" / latest["weights"]).weights,
                          restored.weights):
        assert (saved.numpy() == now.numpy()).all()


def test_every_minutes_on_a_worker_follows_the_agreement_not_its_own_clock(tmp_path):
    """A worker's clock never decides: it votes no and saves exactly when the vote (the chief's
    clock) says so, at the same step as every other worker. A vote is read one check later, and
    a "due" that a checkpoint has answered since its vote began is dropped."""
    clock = FakeClock()
    # Read after steps 2, 4, ..., 12 (2 epochs of 6 steps): the votes begun at 0, 2, ..., 10.
    worker = Answers([(False, False), (False, True), (False, True), (False, True), (False, True),
                      (False, False), (False, False)])
    checkpoints = SavedSteps()
    callback = trigger(worker, checkpoints, tmp_path, steps_per_epoch=6, every_minutes=0.001, check_every=2,
                       clock=clock)
    fit_steps(tiny_model(), [advance(clock, 3600.0), callback], 6, epochs=2)
    assert worker.votes == [(False, False)] * 7  # at the start and every 2 steps; never "late"
    # Step 4: saved. Step 6: due, but the epoch's end saves. Step 8: the vote began at step 6,
    # before that end-of-epoch checkpoint: dropped. Step 10: saved.
    assert callback.saved_steps == [4, 10]
    assert checkpoints.saved[0] == (0, 4) and checkpoints.saved[-1] == (1, 10)


def test_every_steps_saves_at_multiples_of_n_and_not_at_an_epoch_end(tmp_path):
    checkpoints = SavedSteps()
    callback = trigger(Answers([(False, False)] * 20), checkpoints, tmp_path, steps_per_epoch=13, every_steps=4)
    fit_steps(tiny_model(), [callback], 13)
    assert checkpoints.saved == [(0, 4), (0, 8), (0, 12)]


def test_a_stop_lands_at_the_check_after_the_signal_and_saves_before_validation(tmp_path):
    """Votes every 3 steps: a signal after step 4 is in the vote of step 6, read at step 9,
    where every worker stops and the cut epoch is saved at once."""
    from training.keras_compat import keras

    checkpoints = SavedSteps()
    answers = [(False, False)] * 2 + [(True, False)]  # the votes begun at 0, 3 and 6 (signal seen)
    worker = Answers(answers)
    callback = trigger(worker, checkpoints, tmp_path, steps_per_epoch=12, check_every=3)
    seen = []
    fit_steps(tiny_model(), [callback, keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: seen.append(batch + 1))], 12)
    assert seen[-1] == 9 and callback.stopped_at.step == 9 and not callback.stopped_at.end_of_epoch
    assert checkpoints.saved == [(0, 9)]
    assert callback.recorder.stopped_mid_epoch  # so the cut epoch gets no history row


def test_best_is_the_epochs_checkpoint_linked_not_saved_twice(tmp_path):
    """The best checkpoint is the same file as the resumable one of its epoch, and outlives it
    when later checkpoints replace that one."""
    from core.config import RuntimeConfig
    from training.backends import MirroredBackend
    from training.checkpoints import CheckpointManager
    from training.cluster import ClusterSpec
    from training.keras_compat import keras

    backend = MirroredBackend(ClusterSpec(0, 1, 0, ("localhost",), None, "localhost"), RuntimeConfig())
    checkpoints = CheckpointManager(tmp_path, backend)
    model = tiny_model()
    fit_steps(model, [], 2)
    name = checkpoints.save_latest(model, {"epoch": 1, "step": 2, "history": []}, best=True)
    best = checkpoints.best_path
    assert best.stat().st_ino == (best.parent / name).stat().st_ino
    expected = [w.numpy() for w in model.weights]
    fit_steps(model, [], 2)
    for step in (4, 6):
        checkpoints.save_latest(model, {"epoch": step // 2, "step": step, "history": []})
    assert not (best.parent / name).exists()
    assert all((a == b).all() for a, b in zip(expected, [w.numpy() for w in keras.models.load_model(best).weights]))


# --- a hard kill of a real run, then launch --resume --------------------------------------------

def tensorboard_steps(folder: Path, tag: str) -> list[int]:
    """Every point of `tag` in every event file of `folder`, duplicates kept (TensorBoard's own
    reader would hide them by purging what it takes for a restart)."""
    from training.keras_compat import tf

    steps = []
    for events in sorted(folder.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            steps += [event.step for value in event.summary.value if value.tag == tag]
    return sorted(steps)


@pytest.mark.slurm
@pytest.mark.slow
def test_trainer_killed_under_slurm_resumes_at_its_step_checkpoint(tmp_path, slurm_cluster):
    from slurm_jobs import launch, wait, wait_final

    job_id, run_dir = launch(tmp_path, f"train.epochs={EPOCHS}", f"train.steps_per_epoch={STEPS_PER_EPOCH}",
                             f"train.checkpoint_every_steps={EVERY_STEPS}", "train.log_every_steps=10")
    out = run_dir / "logs" / f"slurm-{job_id}.out"

    def saved_in_epoch_2() -> bool:
        return out.is_file() and any(int(found.group(2)) == 2 for found in SAVED.finditer(out.read_text()))

    wait(saved_in_epoch_2, job_id, 600, "a step checkpoint in epoch 2")
    # SIGKILL to the trainer itself, as the OOM killer or a lost node would: `scancel --signal=KILL`
    # is no hard kill in SLURM 22.05 (SIGTERM first, so the trainer may still save where it stops).
    subprocess.run(["pkill", "-KILL", "-f", f"training.main --run-dir {run_dir}"], check=True)
    assert wait_final(job_id, 120) != "COMPLETED"
    latest = json.loads((run_dir / "checkpoints" / "latest.json").read_text())
    step = latest["step"]
    assert latest["partial_epoch"] and latest["epoch"] == 1, latest
    assert STEPS_PER_EPOCH < step < 2 * STEPS_PER_EPOCH and step % EVERY_STEPS == 0
    assert latest["weights"] == f"latest-{step:09d}.h5"
    assert [row["epoch"] for row in latest["history"]] == [1]

    done = subprocess.run([sys.executable, "-m", "launcher.cli", "--resume", str(run_dir)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    resumed = re.search(r"^submitted job (\d+)", done.stdout, re.M).group(1)
    assert wait_final(resumed, 900) == "COMPLETED"
    log = (run_dir / "logs" / f"slurm-{resumed}.out").read_text()
    assert (f"resumed from latest-{step:09d}.h5: 1 epochs done, step {step}; epoch 2 continues at step "
            f"{step} ({step - STEPS_PER_EPOCH} of its {STEPS_PER_EPOCH} steps done)") in log
    # Only the rest of the cut epoch was run, then whole epochs: no finished step done twice.
    rest = 2 * STEPS_PER_EPOCH - step
    assert re.search(rf"^{rest}/{rest} - ", log, re.M), log[-3000:]
    assert re.search(rf"^{STEPS_PER_EPOCH}/{STEPS_PER_EPOCH} - ", log, re.M)
    final = json.loads((run_dir / "checkpoints" / "latest.json").read_text())
    assert final["step"] == EPOCHS * STEPS_PER_EPOCH and not final["partial_epoch"]
    # The LR log has each step once: what the killed run logged past its checkpoint is dropped.
    lr_steps = [int(line.split(",")[0]) for line in (run_dir / "lr.csv").read_text().splitlines()[1:]]
    assert lr_steps == list(range(10, EPOCHS * STEPS_PER_EPOCH + 1, 10))
    with open(run_dir / "history.csv") as fh:
        assert [int(line.split(",")[0]) for line in fh.read().splitlines()[1:]] == [1, 2, 3]
    for sub in ("train", "validation"):
        assert tensorboard_steps(run_dir / "tensorboard" / sub, "epoch_loss") == [0, 1, 2], sub
    assert json.loads((run_dir / "status.json").read_text())["state"] == "completed"
