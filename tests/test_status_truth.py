"""status.json tells the truth after a kill: the batch script settles it when the step dies without
an end state, and `launch runs` when the batch shell died too. Unit tests, the rendered script run
with a stand-in srun, and real demo jobs killed on the local SLURM cluster."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core import rundir, runstatus
from core.config import SlurmConfig
from launcher.render import render_sbatch
from slurm_jobs import REPO, job_field, launch, listed_state, status, wait, wait_final


def write(run_dir: Path, **fields) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / rundir.STATUS).write_text(json.dumps(fields))


def test_sigkilled_step_is_killed_with_the_resume_hint(tmp_path):
    run_dir = tmp_path / "it's a run"
    write(run_dir, state="running", epoch=2, job_id="42")
    message = runstatus.settle(run_dir, 137, "42")
    written = json.loads((run_dir / rundir.STATUS).read_text())
    assert written["state"] == "killed" and written["epoch"] == 2 and written["message"] == message
    assert "job 42 killed by SIGKILL (exit 137)" in message
    assert f"launch --resume '{tmp_path}/it'\"'\"'s a run'" in message  # pasteable into a shell


def test_nonzero_exit_without_end_state_is_failed_without_resume_hint(tmp_path):
    write(tmp_path, state="running", job_id="42")
    message = runstatus.settle(tmp_path, 1, "42")
    assert status(tmp_path)["state"] == "failed"
    assert "exit 1" in message and "logs/slurm-42.err" in message and "--resume" not in message


def test_no_status_json_at_all_is_failed(tmp_path):
    runstatus.settle(tmp_path, 2, None)
    assert status(tmp_path)["state"] == "failed"


@pytest.mark.parametrize("state, exit_code", [("stopped", 75), ("failed", 1), ("requeued", 0),
                                              ("completed", 0), ("running", 0)])
def test_the_trainers_own_word_is_kept(tmp_path, state, exit_code):
    write(tmp_path, state=state, message="the trainer's own words")
    assert runstatus.settle(tmp_path, exit_code, "42") is None
    assert status(tmp_path) == {"state": state, "message": "the trainer's own words"}


def test_an_end_state_left_by_the_start_before_a_requeue_does_not_speak_for_this_one(tmp_path, monkeypatch):
    # The trainer before the requeue stopped and wrote "stopped"; the restarted one (restart 1) was
    # killed before it wrote anything. That is this start's end, and SLURM restarts are retried.
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    monkeypatch.setenv("LAUNCH_MAX_REQUEUES", "3")
    write(tmp_path, state="stopped", job_id="42", restarts=0, message="stopped by SIGTERM; checkpoint saved")
    asked = []
    monkeypatch.setattr(runstatus.recovery, "retry", lambda job, restarts, most, say: asked.append(
        (job, restarts, most)) or True)
    assert runstatus.main(["settle", "--run-dir", str(tmp_path), "--exit-code", "137", "--job-id", "42",
                           "--step-seconds", "2"]) == 0
    assert asked == [("42", 1, 3)]
    # Past a quick death (not retried), the kill is written, naming this job.
    assert "job 42 killed by SIGKILL" in runstatus.settle(tmp_path, 137, "42")
    assert status(tmp_path)["state"] == "killed"
    # This start's own word stands; so does another job's, for a job with no id to compare.
    write(tmp_path, state="stopped", job_id="42", restarts=1, message="the trainer's own words")
    assert runstatus.settle(tmp_path, 137, "42") is None
    assert runstatus.main(["settle", "--run-dir", str(tmp_path), "--exit-code", "137", "--job-id", "42",
                           "--step-seconds", "2"]) == 0 and len(asked) == 1
    assert runstatus.settle(tmp_path, 137, None) is None
    # A resume's job whose trainer died at once: the earlier job's "failed" is not its end.
    write(tmp_path, state="failed", job_id="41", restarts=0, message="job 41's words")
    assert "job 43 killed by SIGKILL" in runstatus.settle(tmp_path, 137, "43")


def test_a_restart_after_its_own_job_completed_the_run_ends_quietly(tmp_path, monkeypatch):
    # SLURM requeued job 42 as its trainer exited (a preemption during the final report or exit):
    # the restart, on every rank, finds the run completed by the job's start before it.
    write(tmp_path / "run", state="completed", epoch=4, job_id="42", restarts=0, message="")
    env = {**os.environ, "SLURM_JOB_ID": "42", "SLURM_PROCID": "1", "SLURM_NTASKS": "2",
           "SLURM_JOB_NODELIST": "node1", "SLURM_RESTART_COUNT": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "training.main", "--run-dir", str(tmp_path / "run")],
                          capture_output=True, text=True, env=env, timeout=60, cwd=REPO)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert done.stdout == "[train] job 42 was requeued after its start 0 had completed the run; nothing left to do\n"
    assert status(tmp_path / "run")["state"] == "completed"
    # Anything else is no such restart: not this job's completion, not an earlier start, not completed.
    for env_restarts, fields in (("1", dict(job_id="41", restarts=0)), ("0", dict(job_id="42", restarts=0)),
                                 ("1", dict(job_id="42", restarts=1))):
        write(tmp_path, state="completed", **fields)
        monkeypatch.setenv("SLURM_RESTART_COUNT", env_restarts)
        assert runstatus.completed_before_restart(tmp_path, "42") is None, (env_restarts, fields)
    write(tmp_path, state="stopped", job_id="42", restarts=0)
    assert runstatus.completed_before_restart(tmp_path, "42") is None


def hold(run_dir: Path, job_id: str | None) -> None:
    """RUN/.writer.lock as launcher/resume.py's RunLock writes it for `job_id`."""
    (run_dir / rundir.WRITER_LOCK).write_text(json.dumps(
        {"role": "writer", "job_id": job_id, "host": "node1", "pid": 4242, "since": "2026-01-01T10:00:00+00:00",
         "token": "f00d"}))


def test_a_job_refused_by_the_writer_lock_leaves_status_json_alone(tmp_path, capsys):
    # Job 42, a hand-run duplicate, stopped at start while job 41 trains; its batch script settles.
    write(tmp_path, state="running", epoch=3, job_id="41", message="")
    hold(tmp_path, "41")
    before = (tmp_path / rundir.STATUS).read_text()
    assert runstatus.settle(tmp_path, 1, "42") is None
    assert runstatus.main(["settle", "--run-dir", str(tmp_path), "--exit-code", "1", "--job-id", "42"]) == 0
    assert (tmp_path / rundir.STATUS).read_text() == before
    assert capsys.readouterr().err == ("launch: job 42 left status.json as it is: the run is written by job 41, "
                                       "which records its own end state\n")


def test_the_lock_holder_and_a_job_that_let_go_of_it_settle_naming_themselves(tmp_path):
    write(tmp_path, state="running", epoch=3, job_id="41")
    hold(tmp_path, "41")  # its chief killed while holding it
    assert "job 41 killed by SIGKILL" in runstatus.settle(tmp_path, 137, "41")
    # Job 42 took over, then failed before its chief wrote "running" (the lock is free again).
    (tmp_path / rundir.WRITER_LOCK).unlink()
    write(tmp_path, state="running", epoch=3, job_id="41")
    assert "job 42 ended with exit 1" in runstatus.settle(tmp_path, 1, "42")
    assert (status(tmp_path)["state"], status(tmp_path)["job_id"]) == ("failed", "42")


def test_settle_command_is_quick_and_tf_free(tmp_path):
    write(tmp_path, state="running")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "core.runstatus", "settle",
                           "--run-dir", str(tmp_path), "--exit-code", "143", "--job-id", "9"],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    # It runs inside SLURM's KillWait after a cancel: seconds at most, so no TensorFlow.
    assert time.monotonic() - started < 5
    assert "tensorflow" not in done.stderr
    assert "status.json set to killed: job 9 killed by SIGTERM" in done.stderr
    assert status(tmp_path)["state"] == "killed"


# A stand-in srun for the rendered script: plays the chief (writes "running"), then dies as told.
FAKE_SRUN = """#!/bin/bash
printf '{"state": "running", "job_id": "77"}' > "$STATUS_FILE"
touch "$STATUS_FILE.started"
%s
"""


def run_script(tmp_path: Path, srun_body: str, term_shell: bool = False) -> tuple[int, Path, str]:
    run_dir = tmp_path / "runs" / "demo 'quoted'; x"
    (run_dir / rundir.LOGS).mkdir(parents=True)
    script = render_sbatch(SlurmConfig(gpus_per_node=0, cpus_per_task=1, job_name="demo"), "mirrored",
                           run_dir, sys.executable, 30)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN % srun_body)
    (bin_dir / "srun").chmod(0o755)
    (tmp_path / "job.sh").write_text(script)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "77",
           "STATUS_FILE": str(run_dir / rundir.STATUS), "PYTHONPATH": str(REPO)}
    shell = subprocess.Popen(["bash", str(tmp_path / "job.sh")], env=env, cwd=tmp_path,
                             stderr=subprocess.PIPE, text=True)
    if term_shell:  # what a cancel does to the batch shell, while the step is still ending
        deadline = time.monotonic() + 30
        while not (run_dir / "status.json.started").exists():
            assert time.monotonic() < deadline and shell.poll() is None
            time.sleep(0.05)
        shell.send_signal(signal.SIGTERM)
        (run_dir / "status.json.term-sent").touch()  # the stand-in srun may end now
    _, err = shell.communicate(timeout=60)
    return shell.returncode, run_dir, err


def test_rendered_script_settles_a_sigkilled_step(tmp_path):
    code, run_dir, err = run_script(tmp_path, "kill -KILL $$")
    assert code == 137, err
    assert status(run_dir)["state"] == "killed", err
    assert "killed by SIGKILL (exit 137)" in status(run_dir)["message"]
    assert "status.json set to killed" in err and "launch --resume" in err


def test_rendered_script_outlives_its_own_sigterm_to_settle(tmp_path):
    # The step takes a moment to end after the cancel; the shell must wait for it, not die first.
    # It ends only once the shell has been sent SIGTERM (a minute at most, so nothing hangs).
    code, run_dir, err = run_script(tmp_path, 'for _ in $(seq 1200); do [[ -e "$STATUS_FILE.term-sent" ]] '
                                    '&& break; sleep 0.05; done; sleep 1; kill -TERM $$', term_shell=True)
    assert code == 143, err
    assert "SIGTERM received; waiting for the job step to end" in err
    assert status(run_dir)["state"] == "killed" and "SIGTERM" in status(run_dir)["message"]


def test_rendered_script_of_a_refused_job_leaves_the_run_alone(tmp_path):
    # The stand-in chief writes "running" for job 77; here the lock says job 76 writes the run.
    code, run_dir, err = run_script(tmp_path, """printf '{"role": "writer", "job_id": "76", "token": "t"}' \\
        > "$(dirname "$STATUS_FILE")/.writer.lock"; exit 1""")
    assert code == 1 and status(run_dir) == {"state": "running", "job_id": "77"}, err
    assert "launch: job 77 left status.json as it is: the run is written by job 76" in err


def test_rendered_script_repeats_the_trainers_stop(tmp_path):
    code, run_dir, err = run_script(
        tmp_path, """printf '{"state": "stopped", "message": "stopped by SIGTERM; checkpoint saved"}' \\
            > "$STATUS_FILE"; exit 75""")
    assert code == 75 and status(run_dir)["state"] == "stopped"
    assert "status.json: stopped: stopped by SIGTERM; checkpoint saved. Continue the run with" in err


# --- real jobs on the local cluster --------------------------------------------------------------

def launch_and_wait_for_a_step(run_root: Path, epochs: int = 20, minutes: int = 10) -> tuple[str, Path]:
    """A tiny demo run, waited on until the chief says running and has logged a training step."""
    job_id, run_dir = launch(run_root, f"train.epochs={epochs}", "train.log_every_steps=1",
                             "slurm.cpus_per_task=1", "--time", str(minutes))
    lr_log = run_dir / "lr.csv"
    wait(lambda: (run_dir / rundir.STATUS).is_file() and status(run_dir).get("state") == "running"
         and lr_log.is_file() and len(lr_log.read_text().splitlines()) > 1, job_id, 400,
         "the chief to train a step")
    return job_id, run_dir


def step_ended(step: str) -> bool:
    """SLURM no longer lists the job step (of a job still running)."""
    shown = subprocess.run(["scontrol", "show", "step", "-o", step], capture_output=True, text=True)
    return f"step {step} not found" in shown.stdout + shown.stderr


def batch_shell_stopped(job_id: str) -> bool:
    """The job's batch shell, a process of this machine on the local cluster, is stopped."""
    script = f"/job{int(job_id):05d}/slurm_script"  # the batch script's path in slurmd's spool
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and script in (proc / "cmdline").read_text():
                return (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
        except OSError:  # ended meanwhile
            continue
    return False


def assert_listed_as_not_running(run_root: Path, *expected: str) -> None:
    shown = listed_state(run_root)
    assert "RUNNING" not in shown and shown in expected, shown


@pytest.mark.slurm
@pytest.mark.slow
def test_scancel_kill_leaves_no_running_status(tmp_path, slurm_cluster):
    job_id, run_dir = launch_and_wait_for_a_step(tmp_path)
    subprocess.run(["scancel", "--signal=KILL", job_id], check=True)
    # SLURM 22.05 turns a job-wide KILL into a cancel: SIGTERM to every process of the job, batch
    # shell included, then SIGKILL after KillWait (5 s here). A trainer that saves in time says
    # "stopped"; one cut off dies together with the shell, and `launch runs` has to settle it.
    assert wait_final(job_id, 120) == "CANCELLED"
    assert_listed_as_not_running(tmp_path, "CANCELLED")
    written = status(run_dir)
    assert written["state"] in ("stopped", "killed"), written
    if written["state"] == "killed":  # by the batch script if it outlived the step, else by launch runs
        assert (f"job {job_id} killed by SIG" in written["message"]
                or f"job {job_id} ended as CANCELLED in SLURM" in written["message"]), written
        assert f"launch --resume {run_dir}" in written["message"]


@pytest.mark.slurm
@pytest.mark.slow
def test_sigkilled_chief_is_killed_in_status_json(tmp_path, slurm_cluster):
    job_id, run_dir = launch_and_wait_for_a_step(tmp_path)
    # SIGKILL to the step's tasks only, as the OOM killer does: the chief writes nothing more.
    subprocess.run(["scancel", "--signal=KILL", f"{job_id}.0"], check=True)
    assert wait_final(job_id, 120) == "FAILED"
    written = status(run_dir)  # read before any `launch runs`: the batch script wrote it
    assert written["state"] == "killed", written
    assert f"job {job_id} killed by SIGKILL (exit 137)" in written["message"]
    assert f"launch --resume {run_dir}" in written["message"]
    assert_listed_as_not_running(tmp_path, "FAILED")


@pytest.mark.slurm
@pytest.mark.slow
def test_chief_and_batch_shell_killed_together_launch_runs_settles(tmp_path, slurm_cluster):
    job_id, run_dir = launch_and_wait_for_a_step(tmp_path)
    # A lost node: chief and batch shell die at once, so nothing on the node can write. The
    # stopped shell stands in for that: it cannot act on the step's end before it is killed.
    subprocess.run(["scancel", "--batch", "--signal=STOP", job_id], check=True)
    wait(lambda: batch_shell_stopped(job_id), job_id, 60, "the batch shell to stop")
    subprocess.run(["scancel", "--signal=KILL", f"{job_id}.0"], check=True)
    # Then the shell, once SLURM has the step ended: had the job ended first, its end would send
    # the chief SIGTERM, and a chief still alive would save and write "stopped".
    wait(lambda: step_ended(f"{job_id}.0"), job_id, 60, "the killed step to end")
    subprocess.run(["scancel", "--batch", "--signal=KILL", job_id], check=True)
    assert wait_final(job_id, 120) == "FAILED", job_field(job_id, "Reason")
    assert status(run_dir)["state"] == "running"  # the lie this covers
    assert_listed_as_not_running(tmp_path, "FAILED")
    written = status(run_dir)
    assert written["state"] == "failed", written
    assert f"job {job_id} ended as FAILED in SLURM" in written["message"]


def listed(run_root: Path) -> dict:
    """The `launch runs --json` record of the single run under `run_root`."""
    done = subprocess.run([sys.executable, "-m", "launcher.cli", "runs", "--run-root", str(run_root), "--json"],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
    (run,) = json.loads(done.stdout)
    return run


@pytest.mark.slurm
@pytest.mark.slow
def test_hand_run_duplicate_sbatch_leaves_the_running_run_untouched(tmp_path, slurm_cluster):
    # The first job's time limit outlasts any queue: the second job may wait for a node while other
    # tests' jobs hold the cluster, and the first must still be running when it starts.
    first, run_dir = launch_and_wait_for_a_step(tmp_path, epochs=2, minutes=60)
    # `sbatch RUN/job.sbatch` by hand while the run's job trains: refused at start, it must not
    # settle the run it never wrote, nor stand for it in `launch runs`. The first job's trainer is
    # held (SIGSTOP) meanwhile, so the run is still going when the second job starts, at any speed.
    trainer = json.loads((run_dir / rundir.LOGS / "env-0.json").read_text())["pid"]
    os.kill(trainer, signal.SIGSTOP)
    try:
        # A limit of its own, shorter than the first job's: a two-node job of another test queued
        # meanwhile waits for the held first job's node, and SLURM's backfill starts only a job that
        # ends before that one. Longer than the time-limit warning's lead (5 min), which would
        # otherwise signal the job as it starts.
        second = subprocess.run(["sbatch", "--parsable", "--time=15", str(run_dir / rundir.SBATCH)],
                                capture_output=True, text=True, check=True).stdout.strip().split(";")[0]
        assert wait_final(second, 1800) == "FAILED"
    finally:
        with contextlib.suppress(ProcessLookupError):  # a trainer that died is reported below
            os.kill(trainer, signal.SIGCONT)
    assert job_field(first, "JobState") == "RUNNING"
    written = status(run_dir)
    assert (written["state"], str(written["job_id"])) == ("running", first), written
    run = listed(tmp_path)
    assert (run["state"], run["job_id"], run["status_state"]) == ("RUNNING", first, "running"), run
    err = (run_dir / rundir.LOGS / f"slurm-{second}.err").read_text()
    assert f"held by job {first} (" in err, err
    assert f"left status.json as it is: the run is written by job {first}" in err, err

    assert wait_final(first, 600) == "COMPLETED"
    written = status(run_dir)
    assert (written["state"], str(written["job_id"]), written["message"]) == ("completed", first, ""), written
    run = listed(tmp_path)
    assert (run["state"], run["job_id"], run["status_state"]) == ("COMPLETED", first, "completed"), run
