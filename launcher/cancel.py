"""`launch cancel RUN`: scancel a run's queued and running jobs, then settle its status.json.

A cancelled training job saves a checkpoint on SIGTERM when SLURM's kill wait allows and writes
its own end state (stopped); a chief killed before it could is settled here, as `launch runs`
would, so the run never stays "running" with no job.
"""
from __future__ import annotations

import subprocess
import sys
import time

from core import locks, runstatus, slurm
from core.errors import UserError
from core.rundir import RunDir
from core.slurm import job_state
from launcher import runs

END_WAIT_S = 120  # how long to wait for the jobs to leave the queue after scancel


def cancel_run(run: RunDir, end_wait_s: float = END_WAIT_S) -> int:
    """Cancels every active job of `run` and waits for them to end; returns the exit code."""
    jobs = locks.active_jobs(run.path)
    if not jobs:
        state = runstatus.read_status(run.path).get("state", "no status yet")
        print(f"no job of {run.path} is queued or running (status.json: {state}); nothing to cancel")
        return 0
    ids = sorted(jobs, key=slurm.job_order)
    try:
        done = slurm.cancel(ids, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise UserError(f"could not run scancel for job(s) {', '.join(ids)}: {err}; run it on the "
                        "SLURM login node") from None
    if done.returncode:
        said = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise UserError(f"scancel {' '.join(ids)} failed: {said}")
    print(f"cancelled job(s) {', '.join(ids)} of {run.path}", flush=True)
    deadline = time.monotonic() + end_wait_s
    ended = {}
    while len(ended) < len(ids) and time.monotonic() < deadline:
        for job in ids:
            state = job_state(job)
            if job not in ended and state not in slurm.ACTIVE:
                ended[job] = state
        if len(ended) < len(ids):
            time.sleep(1)
    still = [job for job in ids if job not in ended]
    if still:
        print(f"launch: warning: job(s) {', '.join(still)} still in the queue after {end_wait_s:.0f} s; "
              "launch runs settles the status once they end", file=sys.stderr)
    status = runstatus.read_status(run.path)
    newest = ids[-1]
    if newest in ended:
        status = runs.settle_dead_run(run.path, status, newest, ended[newest], squeue_ok=True)
    print(f"status.json: {status.get('state', 'none')}"
          + (f" ({status['message']})" if status.get("message") else ""))
    return 0
