"""Every SLURM command the project runs, in one place: squeue, sacct, scontrol and scancel
(submission itself goes through submitit, launcher/submitit_adapter.py).

One meaning of a job's state: SLURM's own word for it (PENDING, RUNNING, COMPLETED, ...), from
squeue while the job is known there, then from accounting. Callers decide what a missing
client or a slow controller means for them; these functions only ask.
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess

QUERY_TIMEOUT_S = 30
JOB_HOSTNAMES_ENV = "LAUNCH_JOB_HOSTNAMES"  # the job's hosts, space-separated (slurm/job.sbatch.j2, in a container)
# Where a job state came from, as `launch runs --json` names it.
FROM_QUEUE, FROM_ACCOUNTING = "squeue", "sacct"
SCONTROL_TIMEOUT_S = 10
# squeue states of a job that is still (or again) in the queue.
ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
          "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD"}
# squeue's reasons for a pending job that waiting will not clear.
NEVER_RUNS = ("PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "ReqNodeNotAvail",
              "BadConstraints", "InvalidAccount", "InvalidQOS", "PartitionDown", "PartitionInactive",
              "AccountNotAllowed", "QOSMaxWallDurationPerJobLimit", "AssocMaxWallDurationPerJobLimit",
              "QOSMaxGRESPerJob", "QOSMaxCpuPerJobLimit", "QOSMaxNodePerJobLimit")


def job_order(job_id: str) -> tuple[int, int]:
    """Sort key of job ids, oldest first: `123` < `123_4` < `124` (an array task after its job)."""
    head, _, task = job_id.partition("_")
    return int(head), int(task or -1)


def available() -> bool:
    """Whether this machine can submit jobs (a SLURM client is on PATH)."""
    return shutil.which("sbatch") is not None


def can_query() -> bool:
    """Whether scontrol is here to describe the cluster."""
    return shutil.which("scontrol") is not None


def _run(argv: list[str], timeout: float = QUERY_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def squeue(args: list[str], timeout: float = QUERY_TIMEOUT_S) -> subprocess.CompletedProcess | None:
    """`squeue -h ARGS`; None where there is no SLURM client (no job can be queued then).

    Raises:
        OSError, subprocess.TimeoutExpired: squeue is there but could not answer.
    """
    try:
        return _run(["squeue", "-h", *args], timeout)
    except FileNotFoundError:
        return None


def _query(argv: list[str]) -> subprocess.CompletedProcess | None:
    try:
        return _run(argv)
    except (OSError, subprocess.TimeoutExpired):
        return None


def _pairs(text: str, first_word: bool = False) -> dict[str, str]:
    states = {}
    for line in text.splitlines():
        job, _, state = line.strip().partition("|")
        if job and state:
            states[job] = state.split()[0] if first_word else state
    return states


def squeue_states(job_ids: list[str]) -> dict[str, str] | None:
    """{job id: state} for the jobs squeue knows; None when squeue cannot be asked at all."""
    if not job_ids:
        return {}
    done = _query(["squeue", "-h", "--states=all", "-o", "%i|%T", f"--jobs={','.join(job_ids)}"])
    if done is None:
        return None
    if done.returncode != 0:
        # Asked only about jobs it has forgotten, squeue exits 1 with this message.
        return {} if "Invalid job id" in done.stderr else None
    return _pairs(done.stdout)


def sacct_states(job_ids: list[str]) -> dict[str, str] | None:
    """{job id: state} from accounting; None when accounting is off or sacct is missing."""
    if not job_ids:
        return {}
    done = _query(["sacct", "-n", "-X", "-P", "-o", "JobID,State", f"--jobs={','.join(job_ids)}"])
    if done is None or done.returncode != 0:
        return None
    return _pairs(done.stdout, first_word=True)  # "CANCELLED by 1000" -> CANCELLED


def job_state(job_id: str) -> str | None:
    """SLURM's word for a job (squeue, then sacct); None when neither knows it. For a job array:
    an active state while any task is queued or running, then the first task's that did not
    complete, else COMPLETED."""
    for argv in (["squeue", "-h", "--states=all", "-j", job_id, "-o", "%T"],
                 ["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id]):
        done = _query(argv)
        words = done.stdout.split() if done is not None and done.returncode == 0 else []
        if words:
            return next((w for w in words if w in ACTIVE), None) or next(
                (w for w in words if w != "COMPLETED"), words[0])
    return None


def pending_reason(job_id: str) -> str | None:
    """squeue's reason for a queued job, or None when it cannot be asked."""
    try:
        done = _run(["squeue", "-j", job_id, "-h", "-o", "%r"], SCONTROL_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def show(what: str) -> str:
    """`scontrol show WHAT -o` (partition, node): one record per line.

    Raises:
        OSError: scontrol failed; the message is its first line.
    """
    done = _run(["scontrol", "show", what, "-o"], SCONTROL_TIMEOUT_S)
    if done.returncode != 0:
        raise OSError((done.stderr.strip() or f"scontrol exited {done.returncode}").splitlines()[0])
    return done.stdout


def max_array_size() -> int | None:
    """The cluster's MaxArraySize (task ids must stay below it); None without a SLURM client."""
    try:
        done = _run(["scontrol", "show", "config"], SCONTROL_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None  # sbatch has the last word
    found = re.search(r"^MaxArraySize\s*=\s*(\d+)", done.stdout, re.M)
    return int(found.group(1)) if found else None


def srun_help() -> str | None:
    """`srun --help`, where the options of SPANK plugins (Pyxis's --container-image) show; None
    where srun is missing or does not answer."""
    done = _query(["srun", "--help"])
    return done.stdout if done else None


@functools.lru_cache(maxsize=8)
def hostnames(nodelist: str) -> tuple[str, ...]:
    """Expands a nodelist (e.g. `node[1-2]`) with `scontrol show hostnames`, once per nodelist in a
    process: the backend, the Horovod variables and the writer lock all ask. Inside a container
    image, which has no scontrol, the job's own list comes expanded from the batch script."""
    expanded = os.environ.get(JOB_HOSTNAMES_ENV, "").split()
    if expanded and nodelist in (os.environ.get("SLURM_JOB_NODELIST"), os.environ.get("SLURM_STEP_NODELIST")):
        return tuple(expanded)
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], check=True,
                         capture_output=True, text=True).stdout
    return tuple(out.split())


def restarts(job_id: str) -> int | None:
    """SLURM's restart count of a job (`scontrol show job`), None when it cannot be asked. Above
    the job's own $SLURM_RESTART_COUNT, a requeue of it is under way."""
    try:
        done = _run(["scontrol", "show", "job", "-o", job_id], SCONTROL_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"\bRestarts=(\d+)", done.stdout)
    return int(found.group(1)) if found else None


def start_now(job_id: str) -> subprocess.CompletedProcess:
    """Moves a job's start time to now (a job submitted with --begin in the future)."""
    return _run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"])


def requeue(job_id: str) -> subprocess.CompletedProcess:
    """`scontrol requeue JOB` (an array task: that task alone, its id being ARRAY_TASK)."""
    return _run(["scontrol", "requeue", job_id])


def cancel(job_ids: list[str], timeout: float = QUERY_TIMEOUT_S) -> subprocess.CompletedProcess:
    """`scancel` of the given jobs.

    Raises:
        OSError, subprocess.TimeoutExpired: scancel could not be run.
    """
    return _run(["scancel", *job_ids], timeout)
