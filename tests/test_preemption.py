"""Preemption, time limits and lost workers on the real local SLURM cluster: no lost work, no
hangs, one run directory per run."""
from __future__ import annotations

import datetime
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slurm_jobs import (REPO, WHOLE_CLUSTER, epochs_done, final_weights_load, history_epochs, job_field, launch,
                        listed_state, signal_pending, status, trainer_restart_count, trainers, trainers_held, wait,
                        wait_final)
from test_launch_slurm import check_job_results

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def hold_until_signalled(job_id: str, run_dir: Path, lead_s: int) -> None:
    """Keeps the job's trainer stopped (SIGSTOP) until SLURM's time-limit warning, SIGUSR1, is
    pending for it: the run cannot finish before the signal lands, however fast the machine.
    A trainer that starts only after the warning was due is not held."""
    wait(lambda: trainers(run_dir), job_id, 300, "the trainer to start")  # its stop handlers are in
    warning_at = datetime.datetime.fromisoformat(job_field(job_id, "EndTime")).timestamp() - lead_s
    if time.time() >= warning_at:
        return
    with trainers_held(run_dir, job_id) as pids:  # SLURM signals at the warning time or later
        wait(lambda: signal_pending(pids, signal.SIGUSR1), job_id, 400, "the time-limit signal")


@WHOLE_CLUSTER  # holds a CPU for a minute: never beside the job that needs them all
def test_time_limit_signal_checkpoints_requeues_and_completes(tmp_path):
    # A 3-minute limit with the warning 120 s before it: the signal lands about a minute in. The
    # trainer's first round is held until then, so it lands mid-training on any machine; once the
    # job is seen requeued, its limit is raised, so the resumed round finishes at any speed.
    job_id, run_dir = launch(tmp_path, "--time", "3", "slurm.signal_lead_s=120", "train.epochs=4",
                             "slurm.max_requeues=10", "runtime.cpu_devices=2")
    hold_until_signalled(job_id, run_dir, 120)
    # Not released at once: the runs listing must show the job waiting after its own requeue.
    deadline = time.monotonic() + 400
    while listed_state(tmp_path) != "REQUEUED (PENDING)":
        assert time.monotonic() < deadline, f"never listed as requeued; job is {job_field(job_id, 'JobState')}"
        time.sleep(3)
    subprocess.run(["scontrol", "update", f"jobid={job_id}", "TimeLimit=30"], check=True)
    assert wait_final(job_id, 900) == "COMPLETED"
    log = "".join(p.read_text() for p in (run_dir / "logs").glob(f"slurm-{job_id}.out"))
    assert "stop requested: saved a resumable checkpoint" in log
    assert "requeued (restart 1" in log
    assert re.search(r"resumed from latest-\d+\.h5: \d+ epochs done", log)
    assert history_epochs(run_dir) == list(range(1, 5))
    assert status(run_dir)["state"] == "completed"
    final_weights_load(run_dir)


def test_multiworker_run_survives_a_killed_worker_and_a_requeue(tmp_path):
    # One two-node run for two faults: a worker killed after epoch 1 ends the job fast (a first
    # start's death is not retried: core/recovery.py); the resumed job is requeued after an epoch
    # of its own, and completes. (Repeated requeues of one job: tests/test_recovery.py.) It is
    # also the suite's multiworker run: launch returns at once, one task per node, the demo's bar
    # reached with identical replicas.
    epochs, timeout_s = 5, 20
    started = time.monotonic()
    job_id, run_dir = launch(tmp_path, "--nodes", "2", "--gpus", "2", "--gpu-type", "a100",
                             "--backend", "multiworker", f"train.epochs={epochs}",
                             f"runtime.worker_timeout_s={timeout_s}")
    assert time.monotonic() - started < 15, "launch waited for the job instead of returning"
    wait(lambda: epochs_done(run_dir) >= 1, job_id, 400, "epoch 1")
    worker = json.loads((run_dir / "logs" / "env-1.json").read_text())
    with trainers_held(run_dir, job_id):
        os.kill(worker["pid"], signal.SIGKILL)
    killed = time.monotonic()
    assert wait_final(job_id, 120) == "FAILED"
    assert time.monotonic() - killed < timeout_s + 15  # bounded, not until the time limit
    assert listed_state(tmp_path) == "FAILED"
    err = (run_dir / "logs" / f"slurm-{job_id}.err").read_text()
    lost = [line for line in err.splitlines() if "task 1" in line and worker["SLURMD_NODENAME"] in line]
    assert lost, err[-2000:]

    done = subprocess.run([sys.executable, "-m", "launcher.cli", "--resume", str(run_dir)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    job_id = re.search(r"^submitted job (\d+)", done.stdout, re.M).group(1)
    before = epochs_done(run_dir)  # the start before has ended: its last epoch is in
    wait(lambda: epochs_done(run_dir) > before, job_id, 400, f"an epoch after {before}")
    with trainers_held(run_dir, job_id):
        assert listed_state(tmp_path) == "RUNNING"
        subprocess.run(["scontrol", "requeue", job_id], check=True)
    wait(lambda: job_field(job_id, "Restarts") == "1", job_id, 60, "the requeue")
    # The requeued start may still finish the epoch it is in (it stops at its next vote); SLURM
    # starts the next one only once it has ended.
    wait(lambda: trainer_restart_count(run_dir) == "1", job_id, 400, "the restart's trainer")
    assert wait_final(job_id, 600) == "COMPLETED"
    assert listed_state(tmp_path) == "COMPLETED"
    assert [p.name for p in tmp_path.iterdir()] == [run_dir.name]  # the same run directory
    assert history_epochs(run_dir) == list(range(1, epochs + 1))  # each epoch exactly once
    assert status(run_dir)["state"] == "completed"
    assert status(run_dir)["restarts"] == 1
    final_weights_load(run_dir)
    check_job_results(run_dir, {"node1", "node2"})


def test_checkpoint_write_killed_leaves_the_previous_one_loadable(tmp_path):
    """kill -9 in the middle of HDF5 checkpoint writes, at three points of a writer saving
    without pause; the committed checkpoint always loads and names an existing file."""
    writer = tmp_path / "writer.py"
    writer.write_text(
        "import sys\n"
        "from pathlib import Path\n"
        "from core.config import RuntimeConfig\n"
        "from training.backends import MirroredBackend\n"
        "from training.checkpoints import CheckpointManager\n"
        "from training.cluster import ClusterSpec\n"
        "from training.keras_compat import keras\n"
        "backend = MirroredBackend(ClusterSpec(0, 1, 0, ('localhost',), None, 'localhost'), RuntimeConfig())\n"
        "model = keras.Sequential([keras.Input((512,)), keras.layers.Dense(2048), keras.layers.Dense(10)])\n"
        "model.compile('adam', 'mse')\n"
        "model.fit(keras.backend.ones((4, 512)), keras.backend.ones((4, 10)), verbose=0)\n"
        "manager = CheckpointManager(Path(sys.argv[1]), backend)\n"
        "manager.save_latest(model, {'epoch': 0, 'step': 0, 'history': []})\n"
        "print('ready', flush=True)\n"
        "for step in range(1, 10**6):\n"
        "    manager.save_latest(model, {'epoch': step, 'step': step, 'history': []})\n")
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for delay in (0.05, 0.7, 1.6):
        proc = subprocess.Popen([sys.executable, str(writer), str(run_dir)], stdout=subprocess.PIPE,
                                env=env, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = json.loads((run_dir / "checkpoints" / "latest.json").read_text())
        from training.keras_compat import keras

        keras.models.load_model(run_dir / "checkpoints" / state["weights"])
