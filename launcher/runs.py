"""`launch runs`: every run under a run root with its job state, epoch and best accuracy.

Login-node side: no TensorFlow. A run is a sub-folder of the root holding config.yaml.

Where the STATE column comes from, first that answers:
    1. squeue (`--states=all`, so jobs that ended within SLURM's MinJobAge still show how).
    2. sacct, when the site keeps accounting (the local test cluster does not).
    3. the run's own status.json, written by the chief.

What the states say:
    PENDING, RUNNING, COMPLETED, TIMEOUT, ...  SLURM's word for the job.
    REQUEUED (PENDING)   the chief stopped for a requeue and the job waits in the queue again.
    FAILED (status not updated; job N is gone)   SLURM no longer knows the job, yet the chief
        never wrote an end state: the job died without a clean stop (node failure, OOM kill,
        scancel -9, or a time limit with no requeue left). Its logs/slurm-N.err says which.
    LOST (last status requeued)   the same for a job the chief had requeued.
    COMPLETED / FAILED / KILLED / STOPPED   from status.json once SLURM has forgotten the job,
        and for a sweep's array task that had written completed, stopped or failed before its
        array was cancelled (SLURM says CANCELLED).
    RUNNING?   a trailing ? marks a state read from status.json alone, because squeue could
        not be run or the run has no job id (local mode): nothing confirms it is still alive.
    NO JOB   config.yaml only: not submitted, or submitted and not yet recorded.

A run that SLURM shows ended (or has forgotten) while its status.json still says running gets
its status.json rewritten to killed/failed (core/runstatus.py), so that every tool reading
it, not only this listing, stops calling a dead run running. The batch script does the same
when it outlives the step; this covers a batch shell killed along with it.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from core import provenance, rundir, runstatus, storage
from core.errors import UserError
from core.slurm import ACTIVE, job_order, FROM_ACCOUNTING, FROM_QUEUE, sacct_states, squeue_states

# The trainer's own end states, which an array task may write before its array is cancelled.
FINISHED = frozenset({"completed", "stopped", "failed"})

StateQuery = Callable[[list[str]], "dict[str, str] | None"]


@dataclass
class Run:
    """One row of the listing; also the --json record."""

    name: str
    run_dir: str
    job_id: str | None
    state: str
    state_source: str  # squeue | sacct | status.json | none
    epoch: int | None
    epochs: int | None
    best_val_accuracy: float | None
    updated: str | None  # when status.json was last written (ISO 8601)
    status_state: str | None  # status.json's own word
    message: str


def job_id_of(run: Path, status: dict, present: set[str] | None = None) -> str | None:
    """The run's job: the newest of those launch submitted for it (jobs.txt, submitit's record),
    the one holding its writer lock and the one status.json names.

    The newest, because a resumed run gets a new job while status.json still names the old one
    until the new chief starts. Not SLURM's log names: a job submitted by hand while the run's
    job trains writes its log there too, is refused the writer lock and never touches the run, so
    it must not stand for the run. A hand-run job that does write the run takes the lock first.

    `present`: the names in the run's folder, when the caller listed it (no open of a file that
    is not there: `launch runs` over 10,000 runs).
    """
    ids = rundir.launched_job_ids(run, present)
    if status.get("job_id"):
        ids.add(str(status["job_id"]))
    if (present is None or rundir.WRITER_LOCK in present) and (holder := rundir.writer(run).get("job_id")):
        ids.add(str(holder))
    ids = rundir.valid_job_ids(ids)
    return max(ids, key=job_order) if ids else None


def decide_state(status_state: str | None, job_id: str | None, queue: str | None, acct: str | None,
                 squeue_ok: bool, status_job: str | None = None) -> tuple[str, str]:
    """(shown state, where it came from); the rules are in this module's docstring. `status_job`
    is the job status.json names."""
    scheduler, source = (queue, FROM_QUEUE) if queue else (acct, FROM_ACCOUNTING) if acct else (None, "")
    if (scheduler == "CANCELLED" and "_" in (job_id or "") and status_job == job_id
            and status_state in FINISHED):
        # A sweep is ended by cancelling its array: a point whose task had already said how it
        # ended (its end report or checkpoint written) shows that, not the cancel.
        return status_state.upper(), "status.json"
    if scheduler == "FAILED" and status_job == job_id and status_state == "stopped":
        # The trainer stopped with a checkpoint (SIGTERM) and its job exits non-zero to say it
        # did not finish: stopped, and resumable, is the news.
        return "STOPPED", "status.json"
    if scheduler:
        if status_state == "requeued" and scheduler in ACTIVE and scheduler != "RUNNING":
            return f"REQUEUED ({scheduler})", source
        return scheduler, source
    if status_state is None:
        if job_id and squeue_ok:
            return "LOST (no status.json)", "none"
        return ("UNKNOWN?" if job_id else "NO JOB"), "none"
    word = status_state.upper()
    if job_id and squeue_ok:  # the scheduler was asked and has forgotten the job
        if status_state in runstatus.LIVE_STATES:
            return f"FAILED (status not updated; job {job_id} is gone)", "status.json"
        if status_state == "requeued":
            return f"LOST (last status {status_state})", "status.json"
        return word, "status.json"
    # Unconfirmed: finished states stand on their own, live ones cannot be checked.
    return (word if status_state in FINISHED | {"killed"} else word + "?"), "status.json"


def settle_dead_run(run: Path, status: dict, job_id: str | None, scheduler: str | None,
                    squeue_ok: bool) -> dict:
    """status.json after making it truthful: rewritten when SLURM says the job is over but it says running."""
    if status.get("state") not in runstatus.LIVE_STATES or not job_id:
        return status
    # Not after COMPLETED: the trainer wrote its end state before exiting 0, and a "running" read
    # here can only be a stale copy (a shared file system's cache) that must not be overwritten.
    ended = scheduler is not None and scheduler not in ACTIVE and scheduler != "COMPLETED"
    gone = scheduler is None and squeue_ok
    if not (ended or gone):
        return status
    return runstatus.settle_from_slurm(run, job_id, scheduler) or status


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _from_history(run: Path) -> tuple[int | None, float | None]:
    """(last epoch, best val accuracy) from history.csv, for runs whose status lacks them."""
    try:
        with open(run / rundir.HISTORY, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError:
        return None, None
    epochs = [int(float(r["epoch"])) for r in rows if (r.get("epoch") or "").strip()]
    accs = []
    for r in rows:
        try:
            accs.append(float(r.get("val_accuracy") or ""))
        except ValueError:
            pass
    return (max(epochs) if epochs else None), (max(accs) if accs else None)


def _configured_epochs(run: Path) -> int | None:
    try:
        data = yaml.safe_load((run / rundir.CONFIG).read_text()) or {}
        return int(data["train"]["epochs"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return None


def find_run_dirs(run_root: Path) -> list[Path]:
    """Sub-folders of `run_root` holding config.yaml, oldest first (by config.yaml's time)."""
    found = []
    with os.scandir(run_root) as entries:
        for entry in entries:
            try:  # one stat per folder: its config.yaml, which also gives the order
                mtime = os.stat(os.path.join(entry.path, rundir.CONFIG)).st_mtime
            except (FileNotFoundError, NotADirectoryError):
                continue
            found.append((mtime, entry.name))
    return [run_root / name for _, name in sorted(found)]


def list_runs(run_root: str | Path, squeue: StateQuery = squeue_states,
              sacct: StateQuery = sacct_states) -> tuple[list[Run], bool]:
    """All runs under `run_root` and whether squeue answered (False: states are unconfirmed)."""
    found = []
    for run in find_run_dirs(Path(run_root)):
        try:  # one directory read per run: what is there is read, nothing else is tried
            with os.scandir(run) as entries:
                present = {entry.name for entry in entries}
        except OSError:
            present = set()
        status = _read_json(run / rundir.STATUS) if rundir.STATUS in present else {}
        found.append((run, status, job_id_of(run, status, present)))
    ids = sorted({job for _, _, job in found if job})
    queue = squeue(ids)
    squeue_ok = queue is not None
    queue = queue or {}
    unqueued = [job for job in ids if job not in queue]
    acct = (sacct(unqueued) or {}) if unqueued else {}
    runs = []
    for run, status, job in found:
        status_state = status.get("state")
        state, source = decide_state(status_state, job, queue.get(job or ""), acct.get(job or ""), squeue_ok,
                                     str(status.get("job_id") or "") or None)
        status = settle_dead_run(run, status, job, queue.get(job or "") or acct.get(job or ""), squeue_ok)
        status_state = status.get("state")
        # history.csv only for what the chief's status.json lacks (a run that never wrote one)
        last_epoch, best_acc = ((None, None) if "epoch" in status and "best_val_accuracy" in status
                                else _from_history(run))
        epoch = status.get("epoch", last_epoch)
        runs.append(Run(
            name=run.name, run_dir=str(run), job_id=job, state=state, state_source=source,
            epoch=epoch, epochs=status.get("epochs") or _configured_epochs(run),
            best_val_accuracy=status.get("best_val_accuracy", best_acc), updated=status.get("updated"),
            status_state=status_state, message=status.get("message") or ""))
    return runs, squeue_ok


def mirrored_runs(mirror: str) -> list[Run]:
    """The runs of a storage.mirror, from its results index (what the chief last recorded;
    SLURM is not asked: the jobs may belong to another cluster)."""
    runs = []
    for entry in storage.read_index(mirror):
        state = str(entry.get("state") or "unknown").upper()
        runs.append(Run(name=str(entry.get("run")), run_dir=str(entry.get("url")), job_id=entry.get("job_id"),
                        state=state, state_source="mirror", epoch=entry.get("epochs_done", entry.get("epoch")),
                        epochs=entry.get("epochs_total", entry.get("epochs")),
                        best_val_accuracy=entry.get("best_val_accuracy"), updated=entry.get("updated"),
                        status_state=entry.get("state"), message=str(entry.get("message") or "")))
    return runs


def _age(iso: str | None, now: datetime.datetime | None = None) -> str:
    """'5m ago' for an ISO time; '-' when absent or unreadable."""
    try:
        then = datetime.datetime.fromisoformat(iso)
    except (TypeError, ValueError):
        return "-"
    now = now or datetime.datetime.now(then.tzinfo)
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _printable(text: str) -> str:
    # A newline or tab in a folder name would break the table's rows and columns.
    return "".join(c if c.isprintable() else "?" for c in text)


def format_table(runs: list[Run]) -> str:
    """Aligned columns, one run per line; the run directory last, unpadded."""
    header = ("NAME", "JOB", "STATE", "EPOCH", "BEST VAL ACC", "UPDATED", "RUN DIR")
    rows = [header]
    for r in runs:
        epoch = f"{r.epoch if r.epoch is not None else '-'}/{r.epochs if r.epochs is not None else '-'}"
        acc = f"{r.best_val_accuracy:.4f}" if isinstance(r.best_val_accuracy, (int, float)) else "-"
        rows.append((_printable(r.name), r.job_id or "-", r.state, epoch, acc, _age(r.updated),
                     _printable(r.run_dir)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return "\n".join("  ".join([*(cell.ljust(w) for cell, w in zip(row, widths)), row[-1]]).rstrip()
                     for row in rows)


def parser() -> argparse.ArgumentParser:
    """The command line of `launch runs` (launcher/commands.py runs it; --sweep goes to
    launcher/sweep_compare.py)."""
    parser = argparse.ArgumentParser(prog="launch runs", description="List runs with their job state.",
                                     epilog="example:\n  launch runs --run-root /shared/runs --json",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-root", default=rundir.default_run_root(),
                        help="folder holding one sub-folder per run (default: $LAUNCH_RUN_ROOT or ./runs)")
    parser.add_argument("--json", action="store_true", help="print a JSON list of runs instead of a table")
    parser.add_argument("--sweep", metavar="SWEEP_DIR", help="compare the points of a sweep, best first; "
                        "writes compare.csv and compare.png there (launcher/sweep_compare.py)")
    parser.add_argument("--metric", choices=("val_accuracy", "val_loss"), default="val_accuracy",
                        help="with --sweep: the metric that orders the points")
    return parser


def show(args: argparse.Namespace) -> int:
    """`launch runs` without --sweep: the table (or --json) of every run under --run-root."""
    if str(args.run_root).startswith("s3://"):
        runs, squeue_ok, root = mirrored_runs(args.run_root), True, args.run_root  # StorageError: a UserError
    else:
        root = Path(args.run_root).expanduser()
        if not root.is_dir():
            raise UserError(f"run root {root} is not a folder; pass --run-root or set LAUNCH_RUN_ROOT")
        runs, squeue_ok = list_runs(root)
        if not args.json:  # a sweep's points live one folder down, in their own listing
            listed = {r.name for r in runs}
            for sweep in sorted(p for p in root.iterdir() if p.name not in listed and rundir.is_sweep_dir(p)):
                print(f"sweep {_printable(sweep.name)}: launch runs --sweep {_printable(str(sweep))}",
                      file=sys.stderr)
    if args.json:  # with what produced each run (core/provenance.py), read for --json only
        # One run a line, through json's C encoder (indent= falls back to the pure-Python one),
        # and vars rather than dataclasses.asdict (a deep copy of flat fields): those two were half
        # the time of listing 10,000 runs (bench/runs_scale.py).
        rows = (json.dumps({**vars(r), "provenance": provenance.read(r.run_dir) or None}) for r in runs)
        print("[\n" + ",\n".join(rows) + "\n]" if runs else "[]")
        return 0
    if not runs:
        print(f"no runs under {root}", file=sys.stderr)
        return 0
    print(format_table(runs))
    if any(r.state.endswith("?") for r in runs):
        why = "squeue could not be run" if not squeue_ok else "no job id to check"
        print(f"?: state from the run's status.json only ({why}); nothing confirms it is current",
              file=sys.stderr)
    return 0

