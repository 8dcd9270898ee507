"""The run directory: one folder per run on shared storage, never reused by a second run.

Everything a run writes lives under it; this module is the one place that names the files.
"""
from __future__ import annotations

import datetime
import os
from pathlib import Path

CONFIG = "config.yaml"  # resolved config, written by launch
SBATCH = "job.sbatch"  # the exact script submitted
STATUS = "status.json"  # state written by the chief: running / completed / failed / requeued
LOGS = "logs"  # SLURM stdout/stderr
CHECKPOINTS = "checkpoints"  # latest.h5 + latest.json (resume), best.h5 (best val loss)
TENSORBOARD = "tensorboard"
HISTORY = "history.csv"
MODEL = "model"  # final.h5 + model_spec.json
REPORT = "report"  # plots, prediction grids, summary.json


def planned_run_dir(run_root: str | Path, name: str) -> Path:
    """The run directory a run named `name` would get now, before anything is created."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(run_root).expanduser().resolve() / f"{name}-{stamp}"


def new_run_dir(run_root: str | Path, name: str) -> Path:
    """Creates and returns a fresh run directory; appends -2, -3, ... rather than reuse one."""
    base = planned_run_dir(run_root, name)
    root = base.parent
    root.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 1000):
        candidate = root / (base.name if attempt == 1 else f"{base.name}-{attempt}")
        try:
            candidate.mkdir()  # atomic: two launches racing get different folders
        except FileExistsError:
            continue
        (candidate / LOGS).mkdir()
        return candidate
    raise RuntimeError(f"could not create a new run directory under {root}")


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / CONFIG).is_file()


def default_run_root() -> str:
    return os.environ.get("LAUNCH_RUN_ROOT", "./runs")
