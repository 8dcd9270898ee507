"""The run directory: one folder per run on shared storage, never reused by a second run.

Everything a run writes lives under it; this module is the one place that names the files.
"""
from __future__ import annotations

import datetime
import json
import os
import re
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
MODEL_SPEC = "model_spec.json"  # under MODEL: architecture, image size, classes (written at job start)
TOKENIZER = "tokenizer.json"  # under MODEL, text task: settings and vocabulary, adapted once by the chief
LATEST = "latest.json"  # under CHECKPOINTS: the committed resumable checkpoint (epoch, step, history)
JOBS = "jobs.txt"  # every SLURM job id launch submitted for the run, one a line, oldest first
WRITER_LOCK = ".writer.lock"  # held by the job that writes the run (launcher/resume.py)
LAUNCH_LOCK = ".launch.lock"  # held by a `launch --resume` between its checks and its submission

# Job ids in file names: submitit's logs/submitit/<id>_submission.sh, SLURM's logs/slurm-<id>.out.
_JOB_FILE = re.compile(r"^(?:slurm-)?(\d+(?:_\d+)?)(?:_submission\.sh|\.out|\.err)$")


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


def read_json(path: Path) -> dict:
    """A run file's JSON object, or {} when it is absent; a damaged file is an error naming it."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); restore or delete it") from None
    return data if isinstance(data, dict) else {}


def record_job(run_dir: Path, job_id: str) -> None:
    """Appends a submitted job id to RUN_DIR/jobs.txt (one short append: no temp file needed)."""
    with open(Path(run_dir) / JOBS, "a") as fh:
        fh.write(f"{job_id}\n")


def job_ids(run_dir: Path) -> list[str]:
    """Every SLURM job id the run directory knows of, oldest first: jobs.txt, status.json,
    submitit's copies of the script and SLURM's log names (a hand-run sbatch shows up there once
    it starts)."""
    run_dir = Path(run_dir)
    ids = set()
    if (run_dir / JOBS).is_file():
        ids.update((run_dir / JOBS).read_text().split())
    try:
        status = read_json(run_dir / STATUS)
    except ValueError:
        status = {}  # a damaged status.json hides one id at most; the other records remain
    if status.get("job_id"):
        ids.add(str(status["job_id"]))
    for folder in (run_dir / LOGS, run_dir / LOGS / "submitit"):
        if folder.is_dir():
            ids.update(m.group(1) for p in folder.iterdir() if (m := _JOB_FILE.match(p.name)))
    ids = {i for i in ids if re.fullmatch(r"\d+(_\d+)?", i)}
    return sorted(ids, key=lambda i: tuple(int(n) for n in i.split("_")))
