"""Who am I: one JSON file per process describing where SLURM (or local mode) placed it.

Written first thing by `training.main`, before TensorFlow loads, so a job that dies in start-up
still shows which node, rank and GPUs each task got. Every process writes its own file; there is
no chief here because the point is to see all of them.
"""
from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

from core import fsutil, rundir

# Variables that say where a task landed; absent ones are recorded as null.
ENV_KEYS = (
    "SLURMD_NODENAME", "SLURM_JOB_ID", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS",
    "SLURM_NODEID", "CUDA_VISIBLE_DEVICES", "SLURM_STEP_GPUS", "SLURM_JOB_GPUS",
    "SLURM_RESTART_COUNT", "LAUNCH_RANK", "LAUNCH_WORLD_SIZE", "LAUNCH_LOCAL_RANK", "LAUNCH_PORT",
)


def env_report(environ: dict[str, str] | None = None) -> dict[str, object]:
    """The report as a dict; `environ` defaults to this process's environment."""
    environ = dict(os.environ if environ is None else environ)
    # The interpreter tells a task in a container image (its own python3) from one on the host.
    report: dict[str, object] = {"hostname": socket.gethostname(), "pid": os.getpid(), "python": sys.executable}
    report.update({key: environ.get(key) for key in ENV_KEYS})
    return report


def rank_of(environ: dict[str, str]) -> str:
    """SLURM's task rank, else local mode's, else 0 for a plain single process."""
    return environ.get("SLURM_PROCID") or environ.get("LAUNCH_RANK") or "0"


def write_env_report(run_dir: str | Path) -> Path:
    """Writes RUN_DIR/logs/env-<rank>.json atomically and returns its path."""
    report = env_report()
    path = Path(run_dir) / rundir.LOGS / f"env-{rank_of(dict(os.environ))}.json"
    fsutil.atomic_write_text(path, json.dumps(report, indent=2, sort_keys=True) + "\n")
    return path
