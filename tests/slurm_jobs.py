"""Submitting demo runs to the local SLURM cluster and following them, for the integration tests.

SLURM holds a requeued job for about two minutes before it may start again; `wait` releases that
hold with `scontrol update StartTime=now` so the tests stay short. The hold itself is SLURM's
business, not the trainer's.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core import rundir

REPO = Path(__file__).resolve().parent.parent
DEMO = str(REPO / "configs" / "demo.yaml")
# What the tests' jobs ask for instead of the demo's two CPUs a task: with one, two jobs share a
# node of the local cluster (2 CPUs each), so a test that holds its job for a minute (the
# time-limit warning, a stopped trainer) leaves the node to the other tests' jobs, and the
# machine is not left idle with every test waiting on the queue.
ONE_CPU = "slurm.cpus_per_task=1"
# The tests on one worker (an xdist group), one after another: a job that takes every CPU of the
# cluster (the four-rank container run) waits for any other job to end, and the time-limit test
# holds one CPU for a minute by design (its trainer waits for SLURM's warning). Side by side, the
# big job waited 40 s and the machine sat idle.
WHOLE_CLUSTER = pytest.mark.xdist_group("whole-cluster")
# Node states (`sinfo -N`) of a node that is up, possibly running or planned for another test's
# job (the suite runs tests side by side); a trailing "-" ("mixed-") is backfill's plan too.
UP_STATES = {"idle", "mixed", "allocated", "completing", "planned"}
QUEUE_ALLOWANCE_S = 1800  # how long a job may wait for nodes, on top of a wait's own timeout
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
         "DEADLINE", "PREEMPTED"}


def node_is_up(state: str | None) -> bool:
    return (state or "").removesuffix("-") in UP_STATES


def launch(run_root: Path, *args: str) -> tuple[str, Path]:
    """Submits the demo with `args`; each task asks for one CPU (ONE_CPU) unless `args` say otherwise."""
    cmd = [sys.executable, "-m", "launcher.cli", "--config", DEMO, "--run-root", str(run_root), ONE_CPU, *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    job_id = re.search(r"^submitted job (\d+)", done.stdout, re.M).group(1)
    (run_dir,) = [p for p in run_root.iterdir() if p.is_dir()]
    return job_id, run_dir


def job_fields(job_id: str, *fields: str) -> dict[str, str]:
    """The named fields of `scontrol show job`, read once; "" for a field it does not show."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
    return {field: (found.group(1) if (found := re.search(rf"\b{field}=(\S+)", out)) else "") for field in fields}


def job_field(job_id: str, field: str) -> str:
    return job_fields(job_id, field)[field]


_held_since: dict[str, float] = {}


def _on_a_node(raw_job_id: str) -> bool:
    """A process of the job's last start (its slurmstepd) is still on a node: every node of the
    local cluster is this machine."""
    tag = f"slurmstepd: [{raw_job_id}.".encode()
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(tag):
                return True
        except OSError:  # ended meanwhile
            continue
    return False


def release_hold(job_id: str, fields: dict[str, str] | None = None) -> None:
    """Lets a requeued job start now instead of after SLURM's requeue delay, once its last start
    has left the node and two seconds after the hold was first seen. Sooner, slurmd may still
    count the new start's credential as revoked (it compares whole seconds with the time of the
    requeue) and SLURM fails the job: "Job credential revoked". `fields`: its JobState and Reason
    when the caller has just read them."""
    fields = fields or job_fields(job_id, "JobState", "Reason")
    if fields["JobState"] != "PENDING" or fields["Reason"] != "BeginTime":
        _held_since.pop(job_id, None)
        return
    seen = _held_since.setdefault(job_id, time.monotonic())
    if time.monotonic() - seen < 2 or _on_a_node(job_fields(job_id, "JobId")["JobId"]):
        return
    subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], check=True)
    _held_since.pop(job_id, None)


def epochs_done(run_dir: Path) -> int:
    path = run_dir / rundir.HISTORY
    return len(path.read_text().splitlines()) - 1 if path.is_file() else 0


def trainer_report(run_dir: Path, rank: int = 0) -> dict | None:
    """logs/env-<rank>.json of the latest trainer of `rank` to start (pid, SLURM_RESTART_COUNT,
    ...), written once its stop handlers are in; None before any has started."""
    try:
        return json.loads((run_dir / "logs" / f"env-{rank}.json").read_text())
    except (OSError, ValueError):
        return None


def trainer_restart_count(run_dir: Path, rank: int = 0) -> str | None:
    """SLURM_RESTART_COUNT of that trainer ("" on a first start); None before any has started."""
    report = trainer_report(run_dir, rank)
    return None if report is None else report.get("SLURM_RESTART_COUNT") or ""


def wait(condition, job_id: str, timeout_s: float, what: str) -> None:
    """Polls `condition` until it holds. `timeout_s` is a hang guard on the job's own time: while
    the job waits in the queue (other tests' jobs hold the nodes) the guard does not run down, up
    to QUEUE_ALLOWANCE_S in all. On a timeout the job is cancelled and the failure shows its state
    and the end of its logs."""
    last = time.monotonic()
    deadline, queued_until = last + timeout_s, last + QUEUE_ALLOWANCE_S
    while not condition():
        fields = job_fields(job_id, "JobState", "Reason")
        release_hold(job_id, fields)
        now = time.monotonic()
        if fields["JobState"] == "PENDING" and now < queued_until:
            deadline += now - last
        last = now
        if now > deadline:
            fields = job_fields(job_id, "JobState", "Reason", "Restarts", "NodeList", "StdOut", "StdErr")
            logs = "".join(f"\n--- {path} (end)\n{_tail(path)}" for path in
                           dict.fromkeys((fields.pop("StdOut"), fields.pop("StdErr"))) if path)
            subprocess.run(["scancel", job_id])
            pytest.fail(f"timed out after {timeout_s} s of the job's time waiting for {what}; job {job_id}: "
                        f"{fields}{logs}")
        # The condition is read often (a fast machine runs an epoch in about a second), the job
        # itself every 2 s.
        polled = time.monotonic()
        while time.monotonic() - polled < 2 and not condition():
            time.sleep(0.2)


def _tail(path: str, size: int = 3000) -> str:
    try:
        return Path(path).read_text(errors="replace")[-size:]
    except OSError as exc:
        return str(exc)


def process_state(pid: int) -> tuple[str, int]:
    """(state letter, pending signal mask) of a process of this machine; ("", 0) once it is gone."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    except (OSError, ValueError):
        return "", 0
    return fields["State"].split()[0], int(fields["SigPnd"], 16) | int(fields["ShdPnd"], 16)


def trainers(run_dir: Path) -> list[int]:
    """PIDs of the run's trainer processes alive on this machine, one per rank that reported
    (logs/env-N.json, rewritten by every start)."""
    pids = []
    for env in sorted((run_dir / rundir.LOGS).glob("env-*.json")):
        try:
            pid = json.loads(env.read_text())["pid"]
            if b"training.main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(pid)
        except (OSError, ValueError, KeyError):  # ended, or a report being written
            continue
    return pids


@contextlib.contextmanager
def trainers_held(run_dir: Path, job_id: str):
    """Keeps every trainer of the run stopped (SIGSTOP) inside the block, so what the test does
    there (a requeue, a cancel, a kill) lands mid-training on any machine, not after a fast run
    has already ended; SIGCONT after. Fails when no trainer is running any more."""
    pids = trainers(run_dir)
    assert pids, f"no trainer of {run_dir} is running: the run ended before the test could act"
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        wait(lambda: all(process_state(pid)[0] in ("T", "") for pid in pids), job_id, 60, "the trainers to stop")
        yield pids
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def signal_pending(pids: list[int], signum: int) -> bool:
    """Every one of these stopped processes has `signum` pending (one let go, or gone, counts)."""
    mask = 1 << (signum - 1)
    return all((state := process_state(pid))[0] != "T" or state[1] & mask for pid in pids)


def signal_while_held(job_id: str, run_dir: Path, signame: str = "USR1") -> None:
    """Sends SIGNAME to the job's processes (`scancel --signal`) while its trainers are held early
    in the run, then lets them go: the signal lands mid-training on any machine, not after a fast
    run has already ended."""
    wait(lambda: trainers(run_dir), job_id, 300, "the trainer to start")  # its stop handlers are in
    with trainers_held(run_dir, job_id) as pids:
        subprocess.run(["scancel", f"--signal={signame}", job_id], check=True)
        wait(lambda: signal_pending(pids, getattr(signal, f"SIG{signame}")), job_id, 60,
             f"SIG{signame} to reach the trainers")


def job_states(job_id: str) -> list[str]:
    """JobState of the job, or of every task of a job array."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
    return re.findall(r"\bJobState=(\S+)", out)


def wait_final(job_id: str, timeout_s: float) -> str:
    """Waits until the job (every task of an array) has ended; the first state that is not
    COMPLETED, else COMPLETED."""
    wait(lambda: (states := job_states(job_id)) and all(s in FINAL for s in states), job_id, timeout_s,
         "the job to end")
    states = job_states(job_id)
    return next((s for s in states if s != "COMPLETED"), states[0] if states else "")


def history_epochs(run_dir: Path) -> list[int]:
    with open(run_dir / rundir.HISTORY) as fh:
        return [int(row["epoch"]) for row in csv.DictReader(fh)]


def status(run_dir: Path) -> dict:
    return json.loads((run_dir / rundir.STATUS).read_text())


def listed_state(run_root: Path) -> str:
    """The STATE column `launch runs` shows for the single run under `run_root`."""
    done = subprocess.run([sys.executable, "-m", "launcher.cli", "runs", "--run-root", str(run_root),
                           "--json"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
    (run,) = json.loads(done.stdout)
    return run["state"]


def pyxis_containers(job_id: str) -> list[str]:
    """"NODE:NAME" of each container enroot keeps for this job on the local cluster's nodes, as
    enroot on that node sees them (each slurmd has its own disk in its mount namespace:
    slurm/local_cluster.sh): Pyxis keeps a named container after its job unless the job's script
    removes it."""
    nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True, check=True).stdout.split()
    kept = []
    for node in dict.fromkeys(nodes):
        slurmd = Path(f"/run/slurm-local/slurmd-{node}.pid").read_text().strip()
        listed = subprocess.run(["nsenter", f"--mount=/proc/{slurmd}/ns/mnt", "enroot", "list"],
                                capture_output=True, text=True, check=True).stdout.split()
        kept += [f"{node}:{name}" for name in listed if name == f"pyxis_launch-{job_id}"]
    return kept


def final_weights_load(run_dir: Path) -> None:
    from training.keras_compat import keras
    from training.models import custom_objects

    model = keras.models.load_model(run_dir / rundir.MODEL / "final.h5", custom_objects=custom_objects())
    assert model.count_params() > 0
