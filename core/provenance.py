"""What produced a run: RUN_DIR/logs/provenance.json (core/rundir.py PROVENANCE).

Two parts, each written by the side that knows it:
    launch   by `launch` on the login node: the project's version, and the git commit and dirty
             flag of the code and of the config file, where either sits in a git work tree.
    job      by the job's chief at start (training/provenance.py): the same of the code it runs;
             Python, TensorFlow, Keras, CUDA, cuDNN, NCCL and Horovod versions; the nodes, GPUs
             and replicas it runs on.
summary.json, TensorBoard's text tab and `launch runs --json` show the file. TF-free.
"""
from __future__ import annotations

import importlib.metadata
import json
import subprocess
from pathlib import Path
from typing import Any

from core import fsutil, rundir

DISTRIBUTION = "slurm-keras-train"  # the project's name as pip knows it (setup.cfg)
CODE_DIR = Path(__file__).resolve().parent.parent  # the folder holding core/, launcher/, training/
GIT_TIMEOUT_S = 10


def project_version() -> str | None:
    """The installed project's version; None when it runs from a checkout never installed."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(folder: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None  # no git here
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(path: str | Path) -> dict[str, Any] | None:
    """{"commit", "dirty"} of the git work tree holding `path` (a file or folder); None outside
    one. dirty: for a file, the file differs from the commit or is not in it; for a folder, any
    file of the work tree does (ignored files aside)."""
    path = Path(path).resolve()
    folder = path if path.is_dir() else path.parent
    commit = _git(folder, "rev-parse", "HEAD")
    if not commit:
        return None
    which = [] if path.is_dir() else ["--", path.name]
    changes = _git(folder, "status", "--porcelain", *which)
    return {"commit": commit, "dirty": None if changes is None else bool(changes)}


def launch_record(config_path: str | Path | None) -> dict[str, Any]:
    """The launch part: the project's version and the git state of the code and the config
    (a local file; an s3:// config has none)."""
    record: dict[str, Any] = {"project_version": project_version(),
                              "code": {"path": str(CODE_DIR), **(git_state(CODE_DIR) or {})}}
    if config_path is not None and not str(config_path).startswith("s3://"):
        config = Path(config_path).expanduser().resolve()
        record["config"] = {"path": str(config), **(git_state(config) or {})}
    return record


def read(run_dir: str | Path) -> dict[str, Any]:
    """The run's provenance.json, {} when there is none (or it is damaged: it only informs)."""
    try:
        data = json.loads((Path(run_dir) / rundir.LOGS / rundir.PROVENANCE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_part(run_dir: str | Path, part: str, record: dict[str, Any]) -> dict[str, Any]:
    """Sets one part ("launch" or "job") of provenance.json, keeping the other; returns the whole."""
    whole = {**read(run_dir), part: record}
    fsutil.atomic_write_text(Path(run_dir) / rundir.LOGS / rundir.PROVENANCE,
                             json.dumps(whole, indent=1, sort_keys=True) + "\n")
    return whole
