"""Chaos: a two-node demo run hit by random faults at random steps must still complete, with
every epoch once, no step trained twice, continuous TensorBoard steps, a truthful status.json and
`launch runs` at every observation, and the accuracy of an undisturbed run.

It takes a node down, so it never runs beside other tests: only when selected by its marker,
as tests/install_and_run.sh does after the suite:

    python3 -m pytest -m chaos                      # seed 1
    CHAOS_SEEDS=1,2,3 python3 -m pytest -m chaos    # one run per seed

Each run prints its seed and every fault; `CHAOS_SEEDS=N` replays one. Faults a cluster does by
itself (a requeue, a node lost and back, a stalled worker, a duplicate job) must heal without a
person; after a killed worker or a SIGTERM the run stops and is resumed with `launch --resume`,
as a user would.
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core import rundir
from slurm_jobs import DEMO, REPO, history_epochs, job_field, release_hold, wait_final
from test_step_checkpoints import tensorboard_steps

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.chaos]

SEEDS = [int(s) for s in os.environ.get("CHAOS_SEEDS", "1").split(",")]
FAULTS = ("kill", "stop", "requeue", "node", "term", "duplicate")
N_FAULTS = 8
EPOCHS = 8  # the demo's own; 176 steps leave room for eight faults at 1-8 steps apart
STEPS_PER_EPOCH = 22  # the demo's 1,437 training images in global batches of 64
LOG_EVERY = 2  # lr.csv gets a row every LOG_EVERY steps: a step trained twice shows up there
RUN = ("--nodes", "2", "--backend", "multiworker", f"train.epochs={EPOCHS}", "train.checkpoint_every_steps=4",
       f"train.log_every_steps={LOG_EVERY}", "slurm.max_requeues=40", "runtime.worker_timeout_s=300",
       "slurm.cpus_per_task=1")  # one CPU of each node's two: a duplicate job starts beside the run
# runtime.worker_timeout_s: a stalled worker must outlast a duplicate job's life (see strike); a
# killed one still ends the job at once (srun --kill-on-bad-exit).
ALIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"}
WAIT_S = 600  # for any one event; a loaded machine is slow, a stuck run is stuck
DONE = "completed"  # strike's answer when the run ended normally before the fault took effect


class Log(list):
    """The faults and observations, printed as they happen (pytest -s) and kept for the failure."""

    def append(self, line: str) -> None:
        print(line, flush=True)
        super().append(line)


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def submitted(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stderr
    return re.search(r"^submitted job (\d+)", done.stdout, re.M).group(1)


def until(condition, what: str, job_id: str | None = None):
    deadline = time.monotonic() + WAIT_S
    while not (found := condition()):
        if job_id:
            release_hold(job_id)  # a requeued job waits out SLURM's requeue delay otherwise
        assert time.monotonic() < deadline, f"no {what} after {WAIT_S} s"
        time.sleep(1)
    return found


def committed_step(run_dir: Path) -> int:
    try:
        return json.loads((run_dir / rundir.CHECKPOINTS / rundir.LATEST).read_text())["step"]
    except (OSError, ValueError, KeyError):
        return 0


def trainers(run_dir: Path, job_id: str) -> list[dict] | None:
    """Both ranks' reports (logs/env-R.json) once both trainers of this start of the job are up."""
    restarts = job_field(job_id, "Restarts") or "0"
    found = []
    for rank in (0, 1):
        try:
            env = json.loads((run_dir / rundir.LOGS / f"env-{rank}.json").read_text())
        except (OSError, ValueError):
            return None
        if env.get("SLURM_JOB_ID") != job_id or (env.get("SLURM_RESTART_COUNT") or "0") != restarts:
            return None
        found.append(env)
    return found


def steps_alive(job_id: str) -> bool:
    """Some slurmstepd of the job still runs (on the local cluster, every node is this machine)."""
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(f"slurmstepd: [{job_id}.".encode()):
                return True
        except OSError:  # ended meanwhile
            continue
    return False


def node_up(node: str) -> bool:
    state = subprocess.run(["sinfo", "-h", "-N", "-n", node, "-o", "%t"], capture_output=True, text=True).stdout
    return state.strip().rstrip("*~#") in ("idle", "mix", "alloc", "comp")


def listed(run_root: Path) -> dict:
    done = cli("runs", "--run-root", str(run_root), "--json")
    assert done.returncode == 0, done.stderr
    (run,) = json.loads(done.stdout)
    return run


def observe(run_root: Path, run_dir: Path, job_id: str, log: list[str]) -> None:
    """status.json and `launch runs` agree with SLURM about the run's job right now: read while
    SLURM's state held still (a job may end between two reads; then they are read again)."""
    while True:
        slurm_state = job_field(job_id, "JobState")
        status = json.loads((run_dir / rundir.STATUS).read_text())
        run = listed(run_root)
        if job_field(job_id, "JobState") == slurm_state:
            break
    log.append(f"observed: SLURM {slurm_state}, status.json {status.get('state')} (job {status.get('job_id')}), "
               f"launch runs {run['state']} (job {run['job_id']})")
    assert run["job_id"] == job_id, log[-1]  # never a refused duplicate's job
    if status.get("job_id"):
        assert str(status["job_id"]) == job_id, log[-1]
    if slurm_state == "RUNNING":
        assert run["state"].startswith(("RUNNING", "REQUEUED")), log[-1]
    elif slurm_state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
        assert status["state"] not in ("starting", "running"), log[-1]  # settled, not left live


def final_val_accuracy(run_dir: Path) -> float:
    return float((run_dir / rundir.HISTORY).read_text().splitlines()[-1].split(",")[5])


@pytest.fixture(scope="module")
def undisturbed(slurm_cluster, tmp_path_factory) -> float:
    root = tmp_path_factory.mktemp("undisturbed")
    job_id = submitted(cli("--config", DEMO, "--run-root", str(root), *RUN))
    assert wait_final(job_id, WAIT_S) == "COMPLETED"
    (run_dir,) = root.iterdir()
    return final_val_accuracy(run_dir)


def strike(fault: str, rng: random.Random, run_dir: Path, job_id: str, log: list[str]) -> str | None:
    """Does `fault` to the running job; returns the job id that continues the run, None when the
    run stopped and needs `launch --resume`, or DONE when it completed meanwhile."""
    workers = until(lambda: trainers(run_dir, job_id), "trainers of the job", job_id)
    victim = rng.choice(workers)
    before = job_field(job_id, "Restarts")
    if fault in ("kill", "term"):  # the OOM killer or a crash; someone's kill or a node's shutdown
        os.kill(victim["pid"], signal.SIGKILL if fault == "kill" else signal.SIGTERM)
        log.append(f"  sent to rank {victim['SLURM_PROCID']} (pid {victim['pid']}) at {time.strftime('%H:%M:%S')}")
        until(lambda: job_field(job_id, "JobState") not in ALIVE or job_field(job_id, "Restarts") != before,
              "the job's end or requeue")
        # A step killed soon after a requeue is requeued by the job itself (core/recovery.py).
        if job_field(job_id, "Restarts") != before:
            return job_id
        if job_field(job_id, "JobState") == "COMPLETED":
            # A stop is acted on up to two votes after the signal; one that lands on the last
            # step of the last epoch is the run's normal end.
            log.append("  the run reached its end before the stop: completed")
            return DONE
        return None
    if fault == "stop":  # a worker stalled: swapping, a debugger, a hung file system
        pause = rng.uniform(2, 8)
        os.kill(victim["pid"], signal.SIGSTOP)
        time.sleep(pause)  # the fault itself lasts this long; nothing waits for the run here
        os.kill(victim["pid"], signal.SIGCONT)
        log.append(f"  worker stalled {pause:.1f} s")
        return job_id
    if fault == "requeue":  # preemption
        subprocess.run(["scontrol", "requeue", job_id], check=True)
        until(lambda: job_field(job_id, "Restarts") != before, "the requeue")
        return job_id
    if fault == "node":  # a node lost, then back
        node = victim["SLURMD_NODENAME"]
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=down", "reason=chaos"], check=True)
        try:
            until(lambda: job_field(job_id, "Restarts") != before, "SLURM's requeue after the node loss")
            # Back as after a reboot: nothing of the job's lost steps is left on it.
            until(lambda: not steps_alive(job_id), "the lost steps to end")
        finally:  # (fails where the node is up again already: slurmd re-registered it)
            subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], capture_output=True)
        until(lambda: node_up(node), f"{node} back")
        return job_id
    if fault == "duplicate":  # a user runs the run's script by hand while its job runs
        # The run's worker is held meanwhile, so the run is still there, at the same step, when the
        # duplicate starts and ends (the run trains its 176 steps in about a minute; the duplicate
        # lives some 20 s). Held well within runtime.worker_timeout_s: a worker stalled longer
        # ends the run by design, which is not the fault under test.
        os.kill(victim["pid"], signal.SIGSTOP)
        try:
            other = subprocess.run(["sbatch", "--parsable", str(run_dir / rundir.SBATCH)], capture_output=True,
                                   text=True, check=True).stdout.strip()
            log.append(f"  duplicate job {other}: {wait_final(other, WAIT_S)}")  # it must leave the run alone
        finally:
            os.kill(victim["pid"], signal.SIGCONT)
        return job_id
    raise AssertionError(fault)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_run_survives_random_faults(seed, undisturbed, tmp_path):
    rng = random.Random(seed)
    faults = [rng.choice(FAULTS) for _ in range(N_FAULTS)]
    log = Log()
    log.append(f"chaos seed {seed}: {' '.join(faults)} (replay: CHAOS_SEEDS={seed} pytest -m chaos)")
    job_id = ""
    try:
        job_id = submitted(cli("--config", DEMO, "--run-root", str(tmp_path), *RUN))
        (run_dir,) = tmp_path.iterdir()
        for fault in faults:
            after = committed_step(run_dir) + rng.randint(1, 8)
            assert after < EPOCHS * STEPS_PER_EPOCH, f"the run was nearly done before its {fault} fault"
            until(lambda: committed_step(run_dir) >= after, f"step {after}", job_id)
            log.append(f"{fault} at step {committed_step(run_dir)} of job {job_id}")
            continuing = strike(fault, rng, run_dir, job_id, log)
            observe(tmp_path, run_dir, job_id, log)
            if continuing is DONE:
                break
            if continuing is None:  # stopped: the user resumes it
                job_id = submitted(cli("--resume", str(run_dir)))
                log.append(f"  resumed as job {job_id}")
        assert wait_final(job_id, WAIT_S * 2) == "COMPLETED"
        observe(tmp_path, run_dir, job_id, log)
        assert history_epochs(run_dir) == list(range(1, EPOCHS + 1))  # each epoch once
        lr_steps = [int(line.split(",")[0]) for line in (run_dir / rundir.LR_LOG).read_text().splitlines()[1:]]
        assert lr_steps == list(range(LOG_EVERY, EPOCHS * STEPS_PER_EPOCH + 1, LOG_EVERY))  # no step twice
        assert tensorboard_steps(run_dir / rundir.TENSORBOARD / "train", "epoch_loss") == list(range(EPOCHS))
        accuracy = final_val_accuracy(run_dir)
        log.append(f"final val accuracy {accuracy:.4f}; undisturbed {undisturbed:.4f}")
        assert abs(accuracy - undisturbed) <= 0.02
    finally:  # whatever happened, the cluster is left as it was found
        if job_id:
            subprocess.run(["scancel", job_id], capture_output=True)
        for node in ("node1", "node2"):
            subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], capture_output=True)
