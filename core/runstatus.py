"""status.json of a run: its one writer, and the end state for a trainer that could not write one.

TF-free and quick to import, so the batch script can call it after the job step while SLURM's
KillWait runs out, and `launch runs` can use it on the login node:

    python -m core.runstatus settle --run-dir RUN_DIR --exit-code 137 [--job-id 42]

The chief writes running / requeued / stopped / completed / failed itself. A chief killed by a
signal (the OOM killer, `scancel --signal=KILL`, a lost node) writes nothing, so its last word
stays "running"; `settle` replaces it with `killed` (exit status 128 + signal) or `failed`.

Only the run's writer settles it. A second job of the same run (`sbatch RUN/job.sbatch` by hand
while the run's job trains) finds RUN/.writer.lock held and stops at start; its batch script then
runs `settle` too, which must leave status.json to the job holding the lock. A job whose chief
held the lock and let go of it (it failed before writing an end state) still settles.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import signal
import sys
from pathlib import Path

from core import recovery, rundir, slurm
from core.fsutil import atomic_write_text

# Words a trainer writes while it is (or is about to be) alive; anything else is an end state.
LIVE_STATES = frozenset({"starting", "running"})


def read_status(run_dir: str | Path) -> dict:
    """status.json as a dict; {} when it is missing, unreadable or not a JSON object."""
    try:
        data = json.loads((Path(run_dir) / rundir.STATUS).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_status(run_dir: str | Path, **fields) -> None:
    """Merges `fields` into status.json, stamped with the time; atomic, so a reader never sees half."""
    path = Path(run_dir) / rundir.STATUS
    status = json.loads(path.read_text()) if path.is_file() else {}
    status.update(fields, updated=datetime.datetime.now().astimezone().isoformat(timespec="seconds"))
    atomic_write_text(path, json.dumps(status, indent=1))


REQUEUED = "SLURM has requeued the job: it continues from there by itself"


def resume_hint(run_dir: str | Path) -> str:
    return f"Continue the run with: launch --resume {shlex.quote(str(run_dir))}"


def describe_exit(exit_code: int) -> tuple[str, str]:
    """(state, words) for a job step's exit status; srun reports a task killed by signal N as 128 + N."""
    if exit_code > 128:
        try:
            name = signal.Signals(exit_code - 128).name
        except ValueError:
            name = f"signal {exit_code - 128}"
        return "killed", f"killed by {name} (exit {exit_code})"
    return "failed", f"ended with exit {exit_code}"


def other_writer(run_dir: str | Path, job_id: str | None) -> str | None:
    """Who holds the run's writer lock when it is not job `job_id` ("job 41"); None when the lock
    is free or this job's own."""
    holder = rundir.writer(run_dir)
    held_by = str(holder.get("job_id") or "")
    if not holder or held_by == (job_id or ""):
        return None
    return f"job {held_by}" if held_by else f"a run without SLURM on {holder.get('host', '?')}"


def earlier_start(status: dict, job_id: str | None) -> bool:
    """Whether status.json was last written by an earlier start of the run: another job (the one
    a resume follows), or this job before SLURM restarted it (the trainer stamps the job id and
    SLURM_RESTART_COUNT with its states). Its end state then says nothing about this start, whose
    trainer died before writing one: the end state of the start before a requeue is "stopped"."""
    written_by = str(status.get("job_id") or "")
    if not job_id or not written_by:
        return False
    if written_by != job_id:
        return True
    return int(status.get("restarts") or 0) < int(os.environ.get("SLURM_RESTART_COUNT") or 0)


def completed_before_restart(run_dir: str | Path, job_id: str | None) -> str | None:
    """What a restarted job says when its own earlier start had completed the run (SLURM requeued
    it in its last moments: a preemption or `scontrol requeue` during the final report or exit);
    None otherwise. The restart has nothing to do and is no failure: a run completed by another
    job stays refused (core/locks.writer_lock), since a hand-run sbatch would rewrite it."""
    status = read_status(run_dir)
    own = job_id and str(status.get("job_id") or "") == job_id  # a job without an id has no restarts
    if status.get("state") != "completed" or not own or not earlier_start(status, job_id):
        return None
    return (f"job {job_id} was requeued after its start {int(status.get('restarts') or 0)} had completed "
            f"the run; nothing left to do")


def settle(run_dir: str | Path, exit_code: int, job_id: str | None = None, requeued: bool = False) -> str | None:
    """After a failed job step: writes the end state the trainer could not, if its status is still live.

    Returns the message written, or None when this start's trainer had written its own end state
    (which always knows more than an exit status), the step succeeded, or another job holds the run's
    writer lock (this one was refused at start and never wrote the run). `requeued`: SLURM is
    requeueing the job, so the run comes back by itself and nobody is asked to resume it.
    """
    status = read_status(run_dir)
    if exit_code == 0 or (status and status.get("state") not in LIVE_STATES and not earlier_start(status, job_id)):
        return None
    if other_writer(run_dir, job_id):
        return None
    state, how = describe_exit(exit_code)
    job = f"job {job_id}" if job_id else "the job"
    if state == "killed":
        # A kill lands between checkpoints: the last committed one is whole (fsutil's atomic writes).
        message = (f"{job} {how} before the trainer could write its end state (out of memory, "
                   f"scancel or a lost node; logs/slurm-{job_id or '<id>'}.err says which); the last "
                   f"checkpoint is intact. {REQUEUED if requeued else resume_hint(run_dir)}")
    else:
        message = (f"{job} {how} before the trainer wrote its end state; the cause is in "
                   f"logs/slurm-{job_id or '<id>'}.err")
    # No extra keys: the chief's next "running" (on resume) must leave nothing stale behind. The
    # job id, so that status.json names the job whose end it describes.
    write_status(run_dir, state=state, message=message, **({"job_id": job_id} if job_id else {}))
    return message


# SLURM end states that mean the processes were stopped from outside, not that the trainer failed.
KILLED_BY_SLURM = frozenset({"CANCELLED", "TIMEOUT", "PREEMPTED", "OUT_OF_MEMORY", "NODE_FAIL", "DEADLINE"})


def settle_from_slurm(run_dir: str | Path, job_id: str, slurm_state: str | None) -> dict | None:
    """For `launch runs`: the job has ended (or SLURM forgot it) while status.json still says live.

    Writes killed/failed when status.json still names this job and still says running, read again
    just before the write so a chief that started meanwhile (a resume) is not overwritten.

    Args:
        run_dir: the run directory.
        job_id: the job SLURM reports as ended, or no longer knows.
        slurm_state: SLURM's end state (squeue or sacct), or None when SLURM forgot the job.

    Returns:
        The status written, or None when nothing was (another end state, another job, no access).
    """
    status = read_status(run_dir)
    if status.get("state") not in LIVE_STATES or str(status.get("job_id")) != job_id:
        return None
    if slurm_state is None:
        state = "failed"
        how = f"SLURM no longer knows job {job_id} (logs/slurm-{job_id}.err may say how it ended)"
    else:
        state = "killed" if slurm_state in KILLED_BY_SLURM else "failed"
        how = f"job {job_id} ended as {slurm_state} in SLURM"
    message = (f"{how}; the trainer never wrote its end state, so launch runs did. If it was killed, "
               f"the last checkpoint is intact. {resume_hint(run_dir)}")
    try:
        write_status(run_dir, state=state, message=message)
    except (OSError, ValueError):  # someone else's run root, or a file that changed under us
        return None
    return read_status(run_dir)


def _retried(args: argparse.Namespace, job: str) -> bool:
    """A requeued job's step that died at once is requeued again (core/recovery.py)."""
    status = read_status(args.run_dir)
    if status.get("state") not in LIVE_STATES and not earlier_start(status, job):
        return False  # this start's trainer said how it ended: that stands
    restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    max_requeues = int(os.environ.get("LAUNCH_MAX_REQUEUES") or 0)
    if not recovery.should_retry(args.exit_code, args.step_seconds, restarts, int(status.get("continuations", 0)),
                                 max_requeues, bool(args.cancelled)):
        return False
    def say(message: str) -> None:
        write_status(args.run_dir, state="requeued", message=message, job_id=job)
        print(f"launch: {message}", file=sys.stderr, flush=True)

    if recovery.retry(job, restarts, max_requeues, say):
        return True
    # SLURM refused: the step is settled as any failed one, from the status it left.
    write_status(args.run_dir, state=status["state"], message=status.get("message", ""))
    return False


def _requeue_pending(job: str | None) -> bool:
    """SLURM counts a restart of this job beyond the one it runs as: a requeue is under way."""
    count = slurm.restarts(job) if job else None
    return count is not None and count > int(os.environ.get("SLURM_RESTART_COUNT") or 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.runstatus",
                                     description="Record a run's end state after its job step.")
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("settle", help="after a failed step: replace a status.json still saying running")
    cmd.add_argument("--run-dir", required=True, type=Path)
    cmd.add_argument("--exit-code", required=True, type=int, help="the job step's exit status")
    cmd.add_argument("--job-id", default=None, help="SLURM job id, named in the message")
    cmd.add_argument("--step-seconds", type=int, default=None, help="how long the job step ran")
    cmd.add_argument("--cancelled", type=int, default=0, help="1: the batch shell got SIGTERM (a cancel)")
    args = parser.parse_args(argv)
    job = args.job_id or None
    if args.exit_code and (other := other_writer(args.run_dir, job)):
        print(f"launch: {f'job {job}' if job else 'this job'} left status.json as it is: the run is written "
              f"by {other}, which records its own end state", file=sys.stderr)
        return 0
    if job and args.step_seconds is not None and _retried(args, job):
        return 0
    requeued = _requeue_pending(job) if args.exit_code else False
    message = settle(args.run_dir, args.exit_code, job, requeued)
    if message is None:
        status = read_status(args.run_dir)
        # The trainer's own word: a stop with a checkpoint can resume; a failure needs its cause
        # fixed first. (A requeued job exits 0 and comes back by itself: no hint, no second writer.)
        if status.get("state") == "stopped":
            print(f"launch: status.json: stopped: {status.get('message', '')}. "
                  f"{REQUEUED if requeued else resume_hint(args.run_dir)}", file=sys.stderr)
        elif status.get("state") == "failed":
            print(f"launch: status.json: failed: {status.get('message', '')}", file=sys.stderr)
        return 0
    print(f"launch: status.json set to {read_status(args.run_dir).get('state')}: {message}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
