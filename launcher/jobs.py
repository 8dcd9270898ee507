"""Task jobs (eval, predict, gpucheck, convert): request -> render -> submit, or run here.

The same path as a training run: the slurm section of a config (the run's config.yaml, or
--config with overrides and flags) gives the site's partition, account, QoS, GPU style and setup
lines; launcher/render.py renders the script from slurm/task.sbatch.j2; launcher/submit.py
submits it. Without SLURM (no sbatch on PATH, or --cluster local) the command runs here instead.
With the config's container.image set, the job runs inside that image as a training job does,
checked before the queue as launch's preflight checks a training run's.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

from core.config import Config
from core.errors import UserError
from core.slurm import ACTIVE, job_state
from launcher import container
from launcher.container import Container
from launcher.render import TaskJob, describe_request, render_task_sbatch
from launcher.submit import Target, submit_job

POLL_S = 2.0


@dataclasses.dataclass(frozen=True)
class Request:
    """What a task job asks of SLURM beyond the config's site options."""

    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int | None = None  # None: the config's slurm.cpus_per_task
    time_min: int | None = None  # None: the config's slurm.time_min


def task_slurm(cfg: Config, job: TaskJob, request: Request):
    """The slurm section the task job runs with: the config's site options, the job's geometry."""
    slurm = cfg.slurm
    return dataclasses.replace(
        slurm, nodes=request.nodes, gpus_per_node=request.gpus_per_node,
        gpu_type=slurm.gpu_type if request.gpus_per_node else "",
        cpus_per_task=request.cpus_per_task or slurm.cpus_per_task,
        time_min=request.time_min or slurm.time_min,
        job_name=slurm.job_name or job.kind)


def job_container(cfg: Config, job: TaskJob) -> Container | None:
    """The image the job runs in (the config's container section), with the job's folders mounted."""
    return container.for_run(cfg, job.run_dir, job.folders)


def render(cfg: Config, job: TaskJob, request: Request) -> str:
    """The batch script of a task job (pure; raises ConfigError for values sbatch cannot take)."""
    return render_task_sbatch(task_slurm(cfg, job, request), job, job_container(cfg, job))


@dataclasses.dataclass
class Outcome:
    """How a task job went: its exit code here, and for a SLURM job its id and log."""

    code: int
    job_id: str | None = None
    log: Path | None = None
    state: str | None = None


def start(cfg: Config, job: TaskJob, request: Request, *, dry_run: bool = False,
          wait: bool = False) -> Outcome:
    """Runs `job` the way the config says: prints its script, submits it, or runs it here.

    Args:
        cfg: the config whose slurm and runtime sections apply (site options, cluster choice).
        job: what runs, and where its logs go.
        request: nodes, GPUs, CPUs and time of the job.
        dry_run: print the script and do nothing else.
        wait: after submitting, wait until SLURM shows the job ended.

    Raises:
        UserError: the request cannot be rendered, or sbatch refused it (nothing submitted).
    """
    slurm = task_slurm(cfg, job, request)
    box = job_container(cfg, job)
    script = render_task_sbatch(slurm, job, box)  # validation by rendering, before anything happens
    target = Target.choose(cfg.runtime.cluster, dry_run=dry_run)
    if box:  # as launch's preflight does for a training run: refused here, not in the queue
        for note in container.check(cfg, target.on_slurm, folders=job.folders):
            print(f"launch: warning: {note}", file=sys.stderr)
    if dry_run:
        sys.stdout.write(script)
        if note := target.dry_run_note("this would run here"):
            print(f"launch: note: {note}", file=sys.stderr)
        return Outcome(0)
    if target.runs_here:
        return Outcome(run_here(job, target.why))
    try:
        job.log_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the log folder {job.log_dir}: {err.strerror}; pass a "
                        "folder you can write") from None
    # Not logs/submitit: the job ids found there are the run's training jobs (launch runs, resume).
    job_id = submit_job(script, job.log_dir / "submitit-tasks", describe_request(slurm, "multiworker"))
    log = job.log_dir / f"{job.kind}-{job_id}{'_TASK' if job.array else ''}.out"
    gpus = f"{slurm.gpus_per_node} GPU(s) per node" if slurm.gpus_per_node else "no GPUs"
    what = f"job array {job_id} (--array={job.array})" if job.array else f"job {job_id}"
    print(f"submitted {what}: {job.kind} on {slurm.nodes} node(s){' each' if job.array else ''}, {gpus}",
          flush=True)
    print(f"log:         {log} (and .err)", flush=True)
    if not wait:
        return Outcome(0, job_id, log)
    state = wait_for(job_id)
    return Outcome(0 if state == "COMPLETED" else 1, job_id, log, state)


def run_here(job: TaskJob, why: str) -> int:
    """Runs the job's command on this machine, its output on the terminal; returns its exit code."""
    print(f"launch: running {job.kind} here ({why})", file=sys.stderr, flush=True)
    # SLURM variables of an enclosing allocation would describe another job.
    env = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}
    try:
        return subprocess.run(list(job.command), env=env).returncode
    except FileNotFoundError as err:
        raise UserError(f"cannot start {job.command[0]}: {err.strerror}; set runtime.python to an "
                        "interpreter that exists here") from None


def wait_for(job_id: str, timeout_s: float | None = None) -> str:
    """Polls until job `job_id` has left the queue; returns its end state (GONE when forgotten)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        state = job_state(job_id)
        if state not in ACTIVE:
            return state or "GONE"
        if deadline is not None and time.monotonic() > deadline:
            return state
        time.sleep(POLL_S)


def log_lines(log: Path) -> list[str]:
    """The job's output, read once it has ended; [] when there is none. A job array's log
    (KIND-<array>_TASK.out) is every task's, in task order."""
    if log.stem.endswith("_TASK"):
        stem = log.stem[: -len("TASK")]
        logs = sorted(log.parent.glob(f"{stem}*{log.suffix}"), key=lambda p: int(p.stem[len(stem):] or 0))
        return [line for part in logs for line in log_lines(part)]
    try:
        return log.read_text(errors="replace").splitlines()
    except OSError:
        return []
