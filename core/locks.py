"""The run's locks: one writer per run directory, across nodes and launches.

Two guards keep a second writer out of a run directory:
    launch   `launch --resume RUN` asks squeue about every job the run knows of (rundir.job_ids,
             and any job whose log goes to RUN/logs, which catches a hand-run sbatch still
             pending) and refuses, naming the job, while one is queued or running.
    job      the chief takes RUN/.writer.lock before it reads or writes anything; a job that
             finds it held by a live job exits at start with one line.

Why a lock file and not fcntl.flock: the run directory is on shared storage and the writers sit
on different nodes; flock over NFS is local to one client on some kernels and emulated on
others, and a lock held by a lost node is never released. The lock here is a file made with
os.link (atomic on NFS, the classic lockfile recipe) that names its holder: SLURM job id, host,
pid. A holder is stale when SLURM no longer has its job active, or, for a local run, when its
pid is gone on this host. A stale lock is broken by one contender at a time, and only while it
still names the stale holder, so two starters that both saw it stale still leave one holder.

TF-free: launch imports it on login nodes and the trainer before TensorFlow loads.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Iterator

from core import rundir, slurm
from core.config import load_run_config
from core.errors import ConfigError
from core.slurm import ACTIVE

ACQUIRE_TIMEOUT_S = 30  # contenders breaking a stale lock take turns within this
STALE_BREAKER_S = 30
LAUNCH_LOCK_MAX_AGE_S = 600  # a launch takes seconds; an older launch lock is a crashed launch's


class RunBusy(ConfigError):
    """Another job or launch is writing the run directory; the message is one line."""


def _squeue(args: list[str]) -> subprocess.CompletedProcess | None:
    try:
        return slurm.squeue(args)  # None: no SLURM here (local mode), so no job can be queued
    except (OSError, subprocess.TimeoutExpired) as err:
        raise RunBusy(f"cannot ask squeue whether the run's jobs are still queued ({err}); "
                      "retry when the SLURM controller answers") from None


def job_state(job_id: str) -> str | None:
    """SLURM's state of an active job (`squeue -h -j ID -o %T`), None once it has left the queue."""
    done = _squeue(["-j", job_id, "-o", "%T"])
    if done is None or (done.returncode and "Invalid job id" in done.stderr):
        return None
    if done.returncode:
        raise RunBusy(f"squeue -j {job_id} failed ({done.stderr.strip()}); retry when the SLURM "
                      "controller answers")
    states = done.stdout.split()
    return states[0] if states and states[0] in ACTIVE else None


def active_jobs(run_dir: Path) -> dict[str, str]:
    """{job id: state} of the run's jobs that are queued or running."""
    found = {}
    ids = rundir.job_ids(run_dir)
    if ids:
        done = _squeue(["-j", ",".join(ids), "-o", "%i|%T"])
        if done is not None and done.returncode and "Invalid job id" not in done.stderr:
            raise RunBusy(f"squeue failed ({done.stderr.strip()}); retry when the SLURM controller "
                          "answers")
        for line in (done.stdout.splitlines() if done is not None else []):
            job, _, state = line.strip().partition("|")
            if state in ACTIVE:
                found[job] = state
    # A job submitted by hand writes its log to RUN/logs too; sbatch keeps %% as typed.
    logs = str(Path(run_dir) / rundir.LOGS).replace("%", "%%") + "/"
    done = _squeue(["--me", "-O", "JobID:|,State:|,STDOUT:|"])
    for line in (done.stdout.splitlines() if done is not None and not done.returncode else []):
        job, state, out = (line.split("|") + ["", ""])[:3]
        if out.startswith(logs) and state in ACTIVE:
            found[job.strip()] = state
    return found


def check_idle(run_dir: Path) -> None:
    """Raises RunBusy, naming the job, while a job of the run is queued or running (or a local
    run holds its writer lock)."""
    jobs = active_jobs(run_dir)
    if jobs:
        listed = ", ".join(f"{job} ({state})" for job, state in sorted(jobs.items()))
        first = min(jobs, key=slurm.job_order)
        raise RunBusy(f"{run_dir} still has job {listed} in the queue; a second job would write the "
                      f"same checkpoints. Wait for it to end (squeue -j {first}) or scancel {first}, "
                      "then resume")
    holder = rundir.read_lock(Path(run_dir) / rundir.WRITER_LOCK)
    if holder and (why := _alive(holder, None)):
        raise RunBusy(f"{run_dir} is being written by {why}; wait for it to end, then resume")


def _describe(holder: dict) -> str:
    if holder.get("role") == "launch":
        who = "another launch --resume"
    else:
        who = f"job {holder['job_id']}" if holder.get("job_id") else "a local run"
    return f"{who} (host {holder.get('host', '?')}, pid {holder.get('pid', '?')})"


def _alive(holder: dict, my_job_id: str | None, max_age_s: float | None = None) -> str | None:
    """Why `holder` still counts as writing (one phrase), or None when its lock is stale."""
    job = holder.get("job_id")
    if not holder.get("token"):
        return None
    if job:
        if job == my_job_id:
            return None  # this job's own earlier start, before SLURM requeued it
        state = job_state(str(job))
        return f"{_describe(holder)}, {state} in SLURM" if state else None
    if max_age_s is not None:
        started = datetime.datetime.fromisoformat(holder.get("since", "1970-01-01T00:00:00+00:00"))
        if (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds() > max_age_s:
            return None
    if holder.get("host") != socket.gethostname():
        return f"{_describe(holder)}, which cannot be checked from here (delete {rundir.WRITER_LOCK} " \
               "in the run directory if that run has ended)"
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return None
    except (PermissionError, KeyError, ValueError):
        pass
    return f"{_describe(holder)}, still running"


class RunLock:
    """An exclusive lock file in the run directory, held by one job or launch at a time."""

    def __init__(self, path: Path, job_id: str | None = None, max_age_s: float | None = None,
                 role: str = "writer"):
        self.path = Path(path)
        self.job_id = job_id
        self.max_age_s = max_age_s
        self.me = {"role": role, "job_id": job_id, "host": socket.gethostname(), "pid": os.getpid(),
                   "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   "token": uuid.uuid4().hex}

    def acquire(self) -> None:
        """Takes the lock, breaking a stale one; raises RunBusy naming a live holder."""
        mine = self.path.with_name(f"{self.path.name}.{self.me['token']}")
        mine.write_text(json.dumps(self.me))
        deadline = time.monotonic() + ACQUIRE_TIMEOUT_S
        try:
            while time.monotonic() < deadline:
                if self._link(mine, self.path):
                    return
                holder = rundir.read_lock(self.path)
                if holder is None:
                    continue  # released meanwhile
                if why := _alive(holder, self.job_id, self.max_age_s):
                    raise RunBusy(f"{self.path.parent} is held by {why}; stopping without touching it "
                                  "(wait for that one to end, or end it, then resume)")
                self._break(holder, mine)
            raise RunBusy(f"{self.path} stayed contended for {ACQUIRE_TIMEOUT_S} s; check squeue for "
                          "other jobs of the run")
        finally:
            mine.unlink(missing_ok=True)

    def _link(self, mine: Path, target: Path) -> bool:
        """Creates `target` as a link to `mine`; True when this process now owns it."""
        try:
            os.link(mine, target)  # atomic on NFS too, unlike O_EXCL on old clients
            return True
        except FileExistsError:
            # NFS may answer EEXIST to a retried link that in fact succeeded: the content says.
            return (rundir.read_lock(target) or {}).get("token") == self.me["token"]

    def _break(self, stale: dict, mine: Path) -> None:
        """Removes a stale lock. One breaker at a time (RUN/.writer.lock.break), and only if the
        lock still names the stale holder, so a contender that just took it keeps it."""
        breaker = self.path.with_name(f"{self.path.name}.break")
        if not self._link(mine, breaker):
            with contextlib.suppress(OSError):  # a breaker killed inside these few lines
                if time.time() - breaker.stat().st_mtime > STALE_BREAKER_S:
                    breaker.unlink()
            time.sleep(0.05)
            return
        try:
            if rundir.read_lock(self.path) == stale:
                self.path.unlink(missing_ok=True)
        finally:
            breaker.unlink(missing_ok=True)

    def release(self) -> None:
        """Removes the lock if this process still holds it."""
        if (rundir.read_lock(self.path) or {}).get("token") == self.me["token"]:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def writer_lock(run_dir: Path, job_id: str | None, is_chief: bool) -> Iterator[None]:
    """The job's hold on its run directory: the chief takes RUN/.writer.lock (only the chief
    writes the run's files) and refuses a completed run with no epochs left to train, which a
    hand-run sbatch would otherwise rewrite. Other ranks follow the chief."""
    if not is_chief:
        yield
        return
    with RunLock(Path(run_dir) / rundir.WRITER_LOCK, job_id=job_id):
        done, _ = rundir.epochs_done(run_dir)
        epochs = load_run_config(run_dir).train.epochs
        finished = (rundir.read_json(Path(run_dir) / rundir.STATUS).get("state") == "completed")
        if finished and done >= epochs:  # not a report cut short
            raise ConfigError(f"{run_dir} has already trained {done} of {epochs} epochs; nothing to do. To "
                              f"train on: launch --resume {run_dir} train.epochs=N with N above {done}")
        yield


def launch_lock(run_dir: Path) -> RunLock:
    """Held by `launch --resume` from its checks to its submission, so two resumes started at
    once cannot both see an idle run."""
    return RunLock(Path(run_dir) / rundir.LAUNCH_LOCK, max_age_s=LAUNCH_LOCK_MAX_AGE_S, role="launch")
