"""Sweeps on the real local SLURM cluster: one job array, one run directory per point, a requeued
task that resumes alone, a cancelled sweep whose resume trains only its unfinished point, and
the array a resume plans (the unfinished points' own task ids).

Accounting is off on the local cluster (sacct answers nothing), so the array's tasks are read
from squeue and scontrol, which show the same ids.
"""
from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core.runstatus import read_status
from slurm_jobs import (DEMO, ONE_CPU, REPO, epochs_done, history_epochs, job_field, status, trainers_held, wait,
                        wait_final)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
TINY = ("train.steps_per_epoch=8", "train.validation_steps=2", ONE_CPU)  # about 5 s an epoch on 2 shared cores


def launch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO)


def submitted_array(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stderr
    return re.search(r"^submitted job array (\d+)", done.stdout, re.M).group(1)


def queued_tasks(array_id: str) -> set[tuple[str, str]]:
    """{(array job id, task id)} of the array's tasks still in the queue, one line per task."""
    out = subprocess.run(["squeue", "-h", "-r", "-j", array_id, "-o", "%F|%K"], capture_output=True,
                         text=True, check=True).stdout
    return {tuple(line.split("|")) for line in out.split()}


def run_dirs(sweep_dir: Path) -> list[Path]:
    return [sweep_dir / p["run_dir"] for p in yaml.safe_load((sweep_dir / "sweep.yaml").read_text())["points"]]


def files(run_dir: Path) -> tuple[str, str]:
    return (run_dir / "history.csv").read_text(), (run_dir / "status.json").read_text()


def test_grid_sweep_is_one_array_and_a_requeued_task_resumes_alone(slurm_cluster, tmp_path):
    # A grid of two axes (two values by one: the product and the point names are
    # tests/test_sweep.py's), one task at a time, so point 0 has completed when point 1 is requeued.
    # Eight of these short epochs: after its first, task 1 still trains for seconds on an idle
    # machine (with three, it had finished before the test's hold could land).
    epochs = 8
    array = submitted_array(launch("--config", DEMO, "--run-root", str(tmp_path), "--sweep",
                                   "optimizer.lr=0.003,0.01", "--sweep", "model.dropout=0.2",
                                   "--max-parallel", "1", f"train.epochs={epochs}", *TINY))
    assert queued_tasks(array) == {(array, str(i)) for i in range(2)}  # one array id, two tasks
    assert job_field(array, "ArrayTaskThrottle") == "1"
    (sweep_dir,) = tmp_path.iterdir()
    runs = run_dirs(sweep_dir)
    assert [r.name for r in runs] == ["000-lr0.003-dropout0.2", "001-lr0.01-dropout0.2"]
    assert yaml.safe_load((runs[1] / "config.yaml").read_text())["optimizer"]["lr"] == 0.01

    task1 = f"{array}_1"
    wait(lambda: epochs_done(runs[1]) >= 1, task1, 600, "task 1's first epoch")
    with trainers_held(runs[1], task1):
        subprocess.run(["scontrol", "requeue", task1], check=True)
    assert read_status(runs[0]).get("state") == "completed"  # the throttle ran it first
    finished = files(runs[0])
    wait(lambda: job_field(task1, "Restarts") == "1", task1, 60, "the requeue")
    for i in range(2):
        assert wait_final(f"{array}_{i}", 600) == "COMPLETED", (runs[i] / "logs").iterdir()
    for i, run in enumerate(runs):
        assert history_epochs(run) == list(range(1, epochs + 1)), i  # each epoch once
        assert status(run)["state"] == "completed" and status(run)["job_id"] == f"{array}_{i}"
        assert status(run)["restarts"] == i, i
    assert files(runs[0]) == finished  # untouched
    log = (runs[1] / "logs" / f"slurm-{task1}.out").read_text()
    assert re.search(r"resumed from latest-\d+\.h5", log), log[-2000:]
    done = launch("--resume", str(sweep_dir))
    assert done.returncode == 2 and "all 2 points have completed" in done.stderr, done.stderr

    done = launch("runs", "--sweep", str(sweep_dir))
    assert done.returncode == 0, done.stderr
    with open(sweep_dir / "compare.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["point"] for r in rows) == ["0", "1"]
    accs = [float(r["best_val_acc"]) for r in rows]
    assert accs == sorted(accs, reverse=True) and {r["state"] for r in rows} == {"COMPLETED"}
    assert (sweep_dir / "compare.png").stat().st_size > 0


def test_a_cancelled_sweep_shows_each_point_as_it_ended_and_resumes_only_the_unfinished_one(slurm_cluster, tmp_path):
    # One point at a time: point 0 (one epoch) completes, then the array is cancelled while point 1
    # trains. The completed point stays COMPLETED, and the cancelled one is not left "running";
    # `launch --resume SWEEP` then trains point 1 alone, from its checkpoint, to the end.
    array = submitted_array(launch("--config", DEMO, "--run-root", str(tmp_path), "--sweep", "train.epochs=1,20",
                                   "--max-parallel", "1", *TINY))
    (sweep_dir,) = tmp_path.iterdir()
    runs = run_dirs(sweep_dir)
    wait(lambda: epochs_done(runs[1]) >= 1, f"{array}_1", 600, "point 1's first epoch")
    subprocess.run(["scancel", array], check=True)
    assert wait_final(f"{array}_1", 300) == "CANCELLED"

    done = launch("runs", "--sweep", str(sweep_dir))
    assert done.returncode == 0, done.stderr
    with open(sweep_dir / "compare.csv") as fh:
        shown = {r["point"]: r["state"] for r in csv.DictReader(fh)}
    assert shown["0"] == "COMPLETED", shown
    assert shown["1"] in ("STOPPED", "CANCELLED"), shown
    assert status(runs[0])["state"] == "completed"
    # Stopped by the trainer, or, where SLURM's KillWait ended it before it could save (5 s on
    # the local cluster), settled by the batch shell or by the listing once SLURM said CANCELLED.
    assert status(runs[1])["state"] in ("stopped", "killed"), status(runs[1])

    finished = files(runs[0])
    epochs = epochs_done(runs[1]) + 1  # the one it was cancelled in, not the 20 it was given
    resumed = submitted_array(launch("--resume", str(sweep_dir), f"train.epochs={epochs}"))
    assert {task for _, task in queued_tasks(resumed)} <= {"1"}
    assert wait_final(f"{resumed}_1", 600) == "COMPLETED"
    assert history_epochs(runs[1]) == list(range(1, epochs + 1))  # each epoch once
    assert status(runs[1])["state"] == "completed" and status(runs[1])["job_id"] == f"{resumed}_1"
    assert files(runs[0]) == finished  # untouched


def test_resume_plans_only_the_unfinished_points_keeping_their_task_ids(tmp_path):
    emitted = tmp_path / "array.sbatch"
    root = tmp_path / "runs"
    done = launch("--config", DEMO, "--run-root", str(root), "--sweep", "optimizer.lr=0.001,0.002,0.003,0.004",
                  "--emit-sbatch", str(emitted), "train.epochs=1", *TINY)
    assert done.returncode == 0, done.stderr
    (sweep_dir,) = root.iterdir()
    runs = run_dirs(sweep_dir)
    for i in (0, 2):  # as a finished array would leave them
        (runs[i] / "status.json").write_text('{"state": "completed", "epoch": 1}')
    preview = launch("--resume", str(sweep_dir), "--max-parallel", "2", "--dry-run")
    assert preview.returncode == 0, preview.stderr
    assert "#SBATCH --array=1,3%2" in preview.stdout
    for i in (0, 2):
        assert sorted(p.name for p in runs[i].iterdir()) == ["config.yaml", "status.json"]  # untouched
