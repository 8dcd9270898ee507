"""Safe resume (launcher/resume.py): one writer per run, overrides the checkpoint can take,
config.yaml changed only for an accepted job, absolute paths.

The SLURM tests share one finished one-epoch demo run and then resume it for real.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core import locks, rundir
from core.config import load_config
from slurm_jobs import REPO, history_epochs, launch, wait, wait_final

pytestmark = pytest.mark.xdist_group("resume-run")  # one worker: its module fixture once

TINY = ("train.epochs=1", "slurm.cpus_per_task=1")


def one_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode != 0, done.stdout
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("launch: error: "), done.stderr
    return done.stderr


def queue(run_dir: Path) -> list[str]:
    """The run's jobs in squeue (by name: other engineers' jobs share the cluster)."""
    return sorted(subprocess.run(["squeue", "-h", "-n", run_dir.name, "-o", "%i"], capture_output=True,
                                 text=True).stdout.split())


def test_relative_paths_are_stored_absolute(launch_cli, tmp_path):
    where = tmp_path / "user's folder"
    (where / "data" / "digits").mkdir(parents=True)  # the demo's cache root, an existing folder
    done = launch_cli("--config", REPO / "configs" / "demo.yaml", "--emit-sbatch", "x.sbatch",
                      "--run-root", "runs", "data.data_dir=data/digits", cwd=where)
    assert done.returncode == 0, done.stderr
    (run_dir,) = (where / "runs").iterdir()
    saved = yaml.safe_load((run_dir / rundir.CONFIG).read_text())
    assert saved["data"]["data_dir"] == str(where / "data" / "digits")
    assert saved["runtime"]["run_root"] == str(where / "runs")
    # A resume from elsewhere keeps the stored path; a relative override resolves where it is typed.
    other = tmp_path / "elsewhere"
    (other / "moved").mkdir(parents=True)
    done = launch_cli("--resume", run_dir, "--emit-sbatch", "y.sbatch", "data.data_dir=moved", cwd=other)
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load((run_dir / rundir.CONFIG).read_text())["data"]["data_dir"] == str(other / "moved")


@pytest.fixture
def checkpointed_run(tmp_path) -> Path:
    """A tfrecord run with a one-epoch checkpoint of a 10-class model (files only, no training)."""
    from launcher import cli

    data = tmp_path / "data"
    data.mkdir()
    argv = ["--config", str(REPO / "configs" / "demo.yaml"), "--emit-sbatch", str(tmp_path / "a.sbatch"),
            "--run-root", str(tmp_path / "runs"), "--no-preflight", "data.source=tfrecord",
            f"data.data_dir={data}"]
    assert cli.main(argv) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    (run_dir / rundir.CHECKPOINTS).mkdir()
    (run_dir / rundir.CHECKPOINTS / rundir.LATEST).write_text(
        json.dumps({"epoch": 1, "step": 28, "weights": "latest-000000028.h5", "history": []}))
    (run_dir / rundir.MODEL).mkdir()
    size = load_config(run_dir / rundir.CONFIG).data.image_size
    (run_dir / rundir.MODEL / rundir.MODEL_SPEC).write_text(
        json.dumps({"architecture": "small_cnn", "image_size": size, "num_classes": 10}))
    return run_dir


@pytest.mark.parametrize("override, says", [
    ("train.precision=bfloat16", "train.precision='bfloat16' on resume: the checkpoint"),
    ("model.trainable_layers=2", "model.trainable_layers=2 on resume"),
    ("train.steps_per_epoch=5", "train.steps_per_epoch=5 on resume: the checkpoint's optimizer step (28)"),
    ("data.data_dir={other}", "holds 3 classes but the run's model"),
])
def test_overrides_the_checkpoint_cannot_take(capsys, checkpointed_run, tmp_path, override, says):
    from launcher import cli

    other = tmp_path / "other"
    other.mkdir()
    (other / "labels.json").write_text(json.dumps({"classes": ["a", "b", "c"]}))
    saved = (checkpointed_run / rundir.CONFIG).read_text()
    code = cli.main(["--resume", str(checkpointed_run), override.format(other=other), "--no-preflight"])
    err = capsys.readouterr().err
    assert code != 0 and err.count("\n") == 1 and says in err, err
    assert (checkpointed_run / rundir.CONFIG).read_text() == saved
    # The same run takes a harmless change.
    assert cli.main(["--resume", str(checkpointed_run), "optimizer.weight_decay=0.0001", "--no-preflight",
                     "--emit-sbatch", str(tmp_path / "b.sbatch")]) == 0, capsys.readouterr().err


def _hold(path: str, token: str, results, tried) -> None:
    """Tries the lock once; a holder keeps it until every contender has tried (`tried`, a
    barrier of all of them), so none can find it released and take it as well."""
    lock = locks.RunLock(Path(path))
    try:
        lock.acquire()
    except locks.RunBusy as err:
        results.put(("refused", str(err)))
        tried.wait(60)
        return
    results.put(("held", token))
    try:
        tried.wait(60)
    finally:
        lock.release()


@pytest.mark.parametrize("stale", [None, {"token": "t", "host": "gone", "job_id": "999999"}])
def test_contenders_started_at_once_leave_one_holder(tmp_path, stale):
    path = tmp_path / rundir.WRITER_LOCK
    if stale:  # a job SIGKILLed long ago: every contender sees it stale and tries to break it
        path.write_text(json.dumps(stale))
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    tried = ctx.Barrier(6)
    procs = [ctx.Process(target=_hold, args=(str(path), str(i), results, tried)) for i in range(6)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
    outcomes = [results.get(timeout=5) for _ in procs]
    assert [o for o, _ in outcomes].count("held") == 1, outcomes
    assert all("still running" in why for o, why in outcomes if o == "refused"), outcomes
    assert not path.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def test_lock_of_a_dead_local_run_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = tmp_path / rundir.WRITER_LOCK
    path.write_text(json.dumps({"token": "t", "host": os.uname().nodename, "pid": dead.pid, "job_id": None}))
    with locks.RunLock(path):
        assert json.loads(path.read_text())["pid"] == os.getpid()
        with pytest.raises(locks.RunBusy, match=r"held by a local run .* still running"):
            locks.RunLock(path).acquire()
    assert not path.exists()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, slurm_cluster) -> Path:
    """A demo run that completed one epoch on the local cluster."""
    run_root = tmp_path_factory.mktemp("resume") / "runs"
    job_id, run_dir = launch(run_root, *TINY)
    assert wait_final(job_id, 600) == "COMPLETED"
    return run_dir


def resume_cli(run_dir: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "launcher.cli", "--resume", str(run_dir), *args],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slurm
@pytest.mark.parametrize("args, says", [
    ((), "completed 1 of 1 epochs; resuming would rewrite its final model"),
    (("train.epochs=2", "model.head_units=[128]"), "model.head_units=[128] on resume: the checkpoint"),
    (("train.epochs=2", "data.batch_size=128"),
     "data.batch_size=128 on resume: the checkpoint's optimizer step"),
])
def test_refused_resumes_leave_the_run_and_queue_as_they_were(launch_cli, finished_run, args, says):
    files = {p.name: p.read_text() for p in finished_run.iterdir() if p.is_file()}
    before = queue(finished_run)
    err = one_line(launch_cli("--resume", finished_run, *args))
    assert says in err
    assert queue(finished_run) == before
    assert {p.name: p.read_text() for p in finished_run.iterdir() if p.is_file()} == files


@pytest.mark.slurm
def test_one_writer_whatever_starts_at_once(launch_cli, finished_run):
    # Two resumes started in the same second: one job, the other launch refused in one line.
    procs = [resume_cli(finished_run, "train.epochs=2") for _ in range(2)]
    outs = [(proc.wait(120), *proc.communicate()) for proc in procs]
    accepted = [out for code, out, _ in outs if code == 0]
    refused = [err for code, _, err in outs if code != 0]
    assert len(accepted) == 1 and len(refused) == 1, outs
    job_id = re.search(r"^submitted job (\d+)", accepted[0], re.M).group(1)
    assert refused[0].count("\n") == 1 and ("another launch --resume" in refused[0] or job_id in refused[0])
    assert yaml.safe_load((finished_run / rundir.CONFIG).read_text())["train"]["epochs"] == 2

    # While it is queued or running, a third resume is refused with its id; nothing is submitted.
    before = queue(finished_run)
    assert f"still has job {job_id} (" in one_line(launch_cli("--resume", finished_run, "train.epochs=3"))
    assert queue(finished_run) == before

    # A hand-run sbatch of the run's script while the job writes: it ends at start, in one line
    # (on a busy cluster it may start only once that job has ended: then the run is complete).
    lock = finished_run / rundir.WRITER_LOCK
    wait(lambda: lock.is_file() and json.loads(lock.read_text()).get("job_id") == job_id, job_id, 300,
         "the resumed job to take the writer lock")
    hand = subprocess.run(["sbatch", "--parsable", str(finished_run / rundir.SBATCH)], capture_output=True,
                          text=True, check=True).stdout.strip().split(";")[0]
    assert wait_final(hand, 300) == "FAILED"
    err = (finished_run / rundir.LOGS / f"slurm-{hand}.err").read_text()
    said = [line for line in err.splitlines() if line.startswith("training: error:")]
    assert len(said) == 1, err
    assert f"held by job {job_id} (" in said[0] or "already trained 2 of 2" in said[0], err

    assert wait_final(job_id, 600) == "COMPLETED"
    assert history_epochs(finished_run) == [1, 2]
    assert json.loads((finished_run / rundir.STATUS).read_text())["job_id"] == job_id
    assert not lock.exists()
