"""`launch runs`: states from squeue, sacct and status.json, table and JSON output."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core import rundir
from launcher import runs

HISTORY = "epoch,loss,accuracy,top5,val_loss,val_accuracy,val_top5,lr,images_per_sec,epoch_time_s\n"


def make_run(root: Path, name: str, status: dict | None = None, submitted: str | None = None,
             history_epochs: int = 0) -> Path:
    run = root / name
    (run / rundir.LOGS).mkdir(parents=True)
    (run / rundir.CONFIG).write_text("train:\n  epochs: 10\n")
    if status is not None:
        (run / rundir.STATUS).write_text(json.dumps(status))
    if submitted:  # what submitit leaves behind when launch submits
        (run / rundir.LOGS / "submitit").mkdir()
        (run / rundir.LOGS / "submitit" / f"{submitted}_submission.sh").write_text("#!/bin/bash\n")
    if history_epochs:
        rows = "".join(f"{e},1,0.5,0.9,1,{0.1 * e},0.9,0.1,100,10\n" for e in range(1, history_epochs + 1))
        (run / rundir.HISTORY).write_text(HISTORY + rows)
    return run


def status(state: str, job_id: str | None, epoch: int = 3, best: float | None = 0.5) -> dict:
    return {"state": state, "job_id": job_id, "epoch": epoch, "epochs": 10, "best_val_accuracy": best,
            "updated": "2026-01-01T10:00:00+00:00", "restarts": 0, "message": ""}


def fake(states: dict[str, str] | None):
    """A squeue/sacct stand-in that knows `states`; None plays a command that cannot answer."""
    def query(job_ids):
        return None if states is None else {j: s for j, s in states.items() if j in job_ids}
    return query


CASES = [
    # name, status.json, submitit job id, squeue knows, sacct knows, shown state, source
    ("done", status("completed", "11"), None, {}, None, "COMPLETED", "status.json"),
    ("crashed", status("failed", "12"), None, {}, None, "FAILED", "status.json"),
    ("live", status("running", "13"), None, {"13": "RUNNING"}, None, "RUNNING", "squeue"),
    ("vanished", status("running", "14"), None, {}, None, "FAILED (status not updated; job 14 is gone)",
     "status.json"),
    ("vanished-requeued", status("requeued", "22"), None, {}, None, "LOST (last status requeued)", "status.json"),
    ("killed", status("killed", "23"), None, {}, None, "KILLED", "status.json"),
    ("requeued", status("requeued", "15"), None, {"15": "PENDING"}, None, "REQUEUED (PENDING)", "squeue"),
    ("timed-out", status("running", "16"), None, {}, {"16": "TIMEOUT"}, "TIMEOUT", "sacct"),
    ("queued", None, "17", {"17": "PENDING"}, None, "PENDING", "squeue"),
    ("resumed", status("running", "18"), "19", {"19": "PENDING"}, None, "PENDING", "squeue"),
    ("never-ran", None, "20", {}, None, "LOST (no status.json)", "none"),
    ("dry", None, None, {}, None, "NO JOB", "none"),
    ("local", status("running", None), None, {}, None, "RUNNING?", "status.json"),
    ("just-ended", status("running", "21"), None, {"21": "CANCELLED"}, None, "CANCELLED", "squeue"),
    # Stopped with a checkpoint by a SIGTERM that was no cancel: its job exits non-zero, FAILED in SLURM.
    ("stopped", status("stopped", "30"), None, {}, {"30": "FAILED"}, "STOPPED", "status.json"),
    ("stopped-other-job", status("stopped", "31"), "32", {}, {"32": "FAILED"}, "FAILED", "sacct"),
]


@pytest.mark.parametrize("name, st, submitted, queue, acct, shown, source", CASES, ids=[c[0] for c in CASES])
def test_state_of_each_kind_of_run(tmp_path, name, st, submitted, queue, acct, shown, source):
    make_run(tmp_path, name, st, submitted)
    (run,), squeue_ok = runs.list_runs(tmp_path, squeue=fake(queue), sacct=fake(acct))
    assert (run.state, run.state_source) == (shown, source)
    assert squeue_ok


# status.json after listing: rewritten only where SLURM says the job is over and status.json
# still says running for that same job.
REWRITES = [
    # name, status.json, submitit job id, squeue knows, sacct knows, status.json state afterwards
    ("vanished", status("running", "14"), None, {}, None, "failed"),
    ("just-ended", status("running", "21"), None, {"21": "CANCELLED"}, None, "killed"),
    ("failed-in-slurm", status("running", "24"), None, {"24": "FAILED"}, None, "failed"),
    ("timed-out", status("running", "16"), None, {}, {"16": "TIMEOUT"}, "killed"),
    ("live", status("running", "13"), None, {"13": "RUNNING"}, None, "running"),
    ("completing", status("running", "25"), None, {"25": "COMPLETING"}, None, "running"),
    ("completed-in-slurm", status("running", "29"), None, {"29": "COMPLETED"}, None, "running"),
    ("resumed", status("running", "18"), "19", {"19": "PENDING"}, None, "running"),
    # The newest job is gone but status.json speaks for an older one: not ours to rewrite.
    ("other-job", status("running", "26"), "27", {}, None, "running"),
    ("stopped", status("stopped", "28"), None, {}, None, "stopped"),
    ("local", status("running", None), None, {}, None, "running"),
]


@pytest.mark.parametrize("name, st, submitted, queue, acct, after", REWRITES, ids=[c[0] for c in REWRITES])
def test_dead_run_status_json_is_rewritten(tmp_path, name, st, submitted, queue, acct, after):
    run_dir = make_run(tmp_path, name, st, submitted)
    (run,), _ = runs.list_runs(tmp_path, squeue=fake(queue), sacct=fake(acct))
    written = json.loads((run_dir / rundir.STATUS).read_text())
    assert written["state"] == after
    assert run.status_state == after
    if run.job_id and (queue or {}).get(run.job_id) != "RUNNING":
        assert "RUNNING" not in run.state  # a job SLURM does not run is never listed as running
    if after != st["state"]:
        assert "launch --resume" in written["message"] and written["epoch"] == st["epoch"]
        assert run.message == written["message"]


def test_a_hand_run_duplicate_job_does_not_stand_for_the_run(tmp_path):
    # Job 42 (sbatch RUN/job.sbatch by hand) wrote its log and was refused while job 41 trains.
    run_dir = make_run(tmp_path, "dup", status("running", "41"))
    (run_dir / rundir.JOBS).write_text("41\n")
    for suffix in (".out", ".err"):
        (run_dir / rundir.LOGS / f"slurm-42{suffix}").write_text("")
    (run,), _ = runs.list_runs(tmp_path, squeue=fake({"41": "RUNNING", "42": "FAILED"}), sacct=fake(None))
    assert (run.job_id, run.state, run.status_state) == ("41", "RUNNING", "running")
    (run,), _ = runs.list_runs(tmp_path, squeue=fake({"41": "COMPLETED", "42": "FAILED"}), sacct=fake(None))
    assert (run.job_id, run.state) == ("41", "COMPLETED")


@pytest.mark.parametrize("jobs, holder, shown", [
    ("41\n43\n", None, ("43", "PENDING")),  # a resume launch submitted; its chief has not started
    ("41\n", "44", ("44", "RUNNING")),  # a hand-run job took over a stopped run: its chief holds the lock
])
def test_the_newest_job_launch_submitted_or_holding_the_lock_is_the_runs(tmp_path, jobs, holder, shown):
    run_dir = make_run(tmp_path, "r", status("stopped", "41"))
    (run_dir / rundir.JOBS).write_text(jobs)
    if holder:
        (run_dir / rundir.WRITER_LOCK).write_text(json.dumps({"job_id": holder, "token": "t"}))
    (run,), _ = runs.list_runs(tmp_path, squeue=fake({"43": "PENDING", "44": "RUNNING"}), sacct=fake(None))
    assert (run.job_id, run.state) == shown


@pytest.mark.parametrize("job, status_job, written, shown", [
    ("100_3", "100_3", "completed", "COMPLETED"),
    ("100_3", "100_3", "stopped", "STOPPED"),
    ("100_3", "100_3", "failed", "FAILED"),
    ("100_3", "100_3", "killed", "CANCELLED"),  # settled because of the cancel: the cancel is the news
    ("100_3", "100_3", "running", "CANCELLED"),
    ("100_3", "99_3", "completed", "CANCELLED"),  # resumed in array 100: status.json speaks for array 99
    ("100", "100", "stopped", "CANCELLED"),  # a plain job: SLURM's word, as before
])
def test_an_array_task_that_ended_before_the_cancel_shows_its_own_end(tmp_path, job, status_job, written, shown):
    run_dir = make_run(tmp_path, "point-0", status(written, status_job))
    (run_dir / rundir.JOBS).write_text(f"{job}\n")
    (run,), _ = runs.list_runs(tmp_path, squeue=fake({job: "CANCELLED"}), sacct=fake(None))
    assert (run.job_id, run.state) == (job, shown)
    assert run.state_source == ("squeue" if shown == "CANCELLED" else "status.json")


def test_without_squeue_nothing_is_rewritten(tmp_path):
    run_dir = make_run(tmp_path, "b", status("running", "6"))
    (run,), squeue_ok = runs.list_runs(tmp_path, squeue=fake(None), sacct=fake(None))
    assert not squeue_ok and run.state == "RUNNING?"
    assert json.loads((run_dir / rundir.STATUS).read_text())["state"] == "running"


def test_without_squeue_live_states_are_marked_unconfirmed(tmp_path):
    make_run(tmp_path, "a", status("requeued", "5"))
    make_run(tmp_path, "b", status("running", "6"))
    make_run(tmp_path, "c", status("completed", "7"))
    found, squeue_ok = runs.list_runs(tmp_path, squeue=fake(None), sacct=fake(None))
    assert not squeue_ok
    assert [r.state for r in found] == ["REQUEUED?", "RUNNING?", "COMPLETED"]


def test_epoch_and_accuracy_fall_back_to_history_and_config(tmp_path):
    make_run(tmp_path, "early", None, "30", history_epochs=4)
    (run,), _ = runs.list_runs(tmp_path, squeue=fake({"30": "RUNNING"}), sacct=fake(None))
    assert (run.epoch, run.epochs, run.best_val_accuracy) == (4, 10, pytest.approx(0.4))


def test_table_is_aligned_and_one_line_per_run(tmp_path):
    make_run(tmp_path, "short", status("completed", "1"))
    make_run(tmp_path, "a much longer\nname; 'x'", status("running", "123456"), history_epochs=2)
    found, _ = runs.list_runs(tmp_path, squeue=fake({"123456": "RUNNING"}), sacct=fake(None))
    lines = runs.format_table(found).splitlines()
    assert len(lines) == 3 and lines[0].startswith("NAME")
    for column in ("JOB", "STATE", "EPOCH", "BEST VAL ACC", "UPDATED", "RUN DIR"):
        at = lines[0].index(column)
        # Every cell of the column starts at the header's offset, after a space.
        assert all(line[at - 1] == " " and line[at] != " " for line in lines), (column, lines)
    assert "a much longer?name; 'x'" in lines[2] and "RUNNING" in lines[2] and "3/10" in lines[2]


def test_json_output_parses(tmp_path, capsys, monkeypatch):
    make_run(tmp_path, "one", status("completed", None, epoch=10, best=0.93))
    assert runs.show(runs.parser().parse_args(["--run-root", str(tmp_path), "--json"])) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert record["name"] == "one" and record["state"] == "COMPLETED" and record["best_val_accuracy"] == 0.93
    assert set(record) == {"name", "run_dir", "job_id", "state", "state_source", "epoch", "epochs",
                           "best_val_accuracy", "updated", "status_state", "message", "provenance"}


def test_missing_run_root_is_one_line(tmp_path, capsys):
    from launcher import cli

    assert cli.main(["runs", "--run-root", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("launch: error: run root") and "--run-root" in err


@pytest.mark.slurm
def test_real_job_running_then_cancelled(tmp_path, slurm_cluster):
    job = subprocess.run(["sbatch", "--parsable", f"--output={tmp_path}/%j.out", "--wrap", "sleep 120"],
                         capture_output=True, text=True, check=True).stdout.strip()
    try:
        make_run(tmp_path, "real", status("running", job))
        deadline = time.monotonic() + 300
        while True:
            (run,), squeue_ok = runs.list_runs(tmp_path)
            if run.state == "RUNNING" or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert squeue_ok and (run.state, run.state_source) == ("RUNNING", "squeue")
    finally:
        subprocess.run(["scancel", job], check=True)
    # A loaded node may keep the cancelled job COMPLETING for a while: wait for it to end (hang guard).
    deadline = time.monotonic() + 600
    while run.state in ("RUNNING", "COMPLETING") and time.monotonic() < deadline:
        time.sleep(1)
        (run,), _ = runs.list_runs(tmp_path)
    # squeue remembers an ended job for MinJobAge (5 min here); after that it is gone.
    assert run.state in ("CANCELLED", f"FAILED (status not updated; job {job} is gone)"), run
    assert run.status_state == "killed" or run.state != "CANCELLED", run  # status.json rewritten
    out = subprocess.run([sys.executable, "-m", "launcher.cli", "runs", "--run-root", str(tmp_path)],
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0 and job in out.stdout and run.state in out.stdout
