"""The run directory: one folder per run on shared storage, never reused by a second run.

Everything a run writes lives under it; this module is the one place that names the files
(the constants below, and `RunDir`, which joins them to a run's folder). TF-free: the login
node, the trainer, evaluate and the reports all ask it.
"""
from __future__ import annotations

import datetime
import json
import os
import re
from pathlib import Path

from core import slurm
from core.errors import RunDirError

DEFAULT_RUN_ROOT = "./runs"  # runtime.run_root when neither the config nor $LAUNCH_RUN_ROOT names one
RUN_ROOT_ENV = "LAUNCH_RUN_ROOT"
CONFIG = "config.yaml"  # resolved config, written by launch
SBATCH = "job.sbatch"  # the exact script submitted
STATUS = "status.json"  # state written by the chief: running / completed / failed / requeued
LOGS = "logs"  # SLURM stdout/stderr
CHECKPOINTS = "checkpoints"  # latest-<step>.h5 + latest.json (resume), best.h5 (best val loss)
TENSORBOARD = "tensorboard"
HISTORY = "history.csv"  # one row per epoch, written by the chief
LR_LOG = "lr.csv"  # the learning rate every few steps, for the live plot
MODEL = "model"  # final.h5 + model_spec.json
REPORT = "report"  # plots, prediction grids, summary.json
MODEL_SPEC = "model_spec.json"  # under MODEL: architecture, image size, classes (written at job start)
FINAL_MODEL = "final.h5"  # under MODEL: the model as training ended
BEST_CHECKPOINT = "best.h5"  # under CHECKPOINTS: the model of the best val loss so far
TOKENIZER = "tokenizer.json"  # under MODEL, text task: settings and vocabulary, adapted once by the chief
LATEST = "latest.json"  # under CHECKPOINTS: the committed resumable checkpoint (epoch, step, history)
LATEST_WEIGHTS = "latest-{step:09d}.h5"  # under CHECKPOINTS: the file LATEST names
LATEST_GLOB = "latest-*.h5"
SUMMARY = "summary.json"  # under REPORT: the run's final figures
PREDICTIONS = "predictions.json"  # under REPORT: accuracy, top-5, loss and files of the end report
JOBS = "jobs.txt"  # every SLURM job id launch submitted for the run, one a line, oldest first
PROVENANCE = "provenance.json"  # under LOGS: what produced the run (core/provenance.py)
WRITER_LOCK = ".writer.lock"  # held by the job that writes the run (core/locks.py)
SWEEP_FILE = "sweep.yaml"  # in a sweep's folder: the points, their values and run directories
RUNS_FILE = "runs.txt"  # in a sweep's folder: run directory of array task i on line i + 1
SKIPPED = "skipped.txt"  # inputs left out, `path<TAB>reason` a line (a run reading texts directly; converters)
LAUNCH_LOCK = ".launch.lock"  # held by a `launch --resume` between its checks and its submission
SUBMITIT = "submitit"  # under LOGS: submitit's copy of each submitted script, named by job id
COPIED_LOGS = "before-copy"  # under LOGS: a run copied from its mirror keeps the earlier jobs' records here
RELEASED = ".released"  # job ids a launch let start once it had written the run's files (launcher/resume.py)

# Job ids in file names: submitit's logs/submitit/<id>_submission.sh, SLURM's logs/slurm-<id>.out.
JOB_FILE = re.compile(r"^(?:slurm-)?(\d+(?:_\d+)?)(?:_submission\.sh|\.out|\.err)$")


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


def run_root_from_env() -> str | None:
    """$LAUNCH_RUN_ROOT, the site's or user's default run root, or None when unset."""
    return os.environ.get(RUN_ROOT_ENV) or None


def default_run_root() -> str:
    return run_root_from_env() or DEFAULT_RUN_ROOT


def read_json(path: Path) -> dict:
    """A run file's JSON object, or {} when it is absent; a damaged file is an error naming it."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise RunDirError(f"{path} is not valid JSON ({err}); restore or delete it") from None
    return data if isinstance(data, dict) else {}


def is_sweep_dir(path: str | Path) -> bool:
    """A sweep's folder (its points are run directories one level down)."""
    return (Path(path) / SWEEP_FILE).is_file()


def epochs_done(run_dir: Path) -> tuple[int, dict | None]:
    """(epochs the latest checkpoint has finished, its state record or None)."""
    state = read_json(Path(run_dir) / CHECKPOINTS / LATEST)
    return int(state.get("epoch", 0)), (state or None)


def read_lock(path: str | Path) -> dict | None:
    """A lock file's holder (job_id, host, pid, token; core/locks.py writes it): None when there
    is no lock, {} when it is half-written by a killed holder (nobody can be named)."""
    try:
        holder = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def writer(run_dir: str | Path) -> dict:
    """The holder RUN/.writer.lock names, or {} when the lock is free or half-written."""
    holder = read_lock(Path(run_dir) / WRITER_LOCK) or {}
    return holder if holder.get("token") else {}


def record_job(run_dir: Path, job_id: str) -> None:
    """Appends a submitted job id to RUN_DIR/jobs.txt (one short append: no temp file needed)."""
    with open(Path(run_dir) / JOBS, "a") as fh:
        fh.write(f"{job_id}\n")


def _job_file_ids(folder: str | Path) -> set[str]:
    """Job ids in the names of a folder's job files (slurm-N.out, N_submission.sh, ...); one
    listing, no stat per file (`launch runs` over 10,000 runs)."""
    try:
        with os.scandir(folder) as entries:
            return {m.group(1) for e in entries if (m := JOB_FILE.match(e.name))}
    except (FileNotFoundError, NotADirectoryError):
        return set()


def launched_job_ids(run_dir: str | Path, present: set[str] | None = None) -> set[str]:
    """The jobs launch submitted for the run: jobs.txt and submitit's copies of the script.
    `present`: the names in the run's folder, when the caller listed it (no open of a file that
    is not there)."""
    ids: set[str] = set()
    if present is None or JOBS in present:
        try:
            ids.update((Path(run_dir) / JOBS).read_text().split())
        except (FileNotFoundError, NotADirectoryError):
            pass
    if present is None or LOGS in present:
        ids |= _job_file_ids(os.path.join(run_dir, LOGS, SUBMITIT))
    return ids


def valid_job_ids(ids: set[str]) -> set[str]:
    """The ids that look like SLURM's (N or N_T): a hand-edited jobs.txt cannot inject others."""
    return {i for i in ids if re.fullmatch(r"\d+(_\d+)?", i)}


def job_ids(run_dir: Path) -> list[str]:
    """Every SLURM job id the run directory knows of, oldest first: the launched ones,
    status.json's and SLURM's log names (a hand-run sbatch shows up there once it starts)."""
    run_dir = Path(run_dir)
    ids = launched_job_ids(run_dir) | _job_file_ids(run_dir / LOGS)
    try:
        status = read_json(run_dir / STATUS)
    except ValueError:
        status = {}  # a damaged status.json hides one id at most; the other records remain
    if status.get("job_id"):
        ids.add(str(status["job_id"]))
    return sorted(valid_job_ids(ids), key=slurm.job_order)


class RunDir:
    """One run's folder: every path in it, and the small readers the login node needs.

    Attributes are paths (nothing is created); `exists()` says whether launch made the folder.
    """

    NAMED_CHECKPOINTS = ("best", "final", "latest")

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config = self.path / CONFIG
        self.sbatch = self.path / SBATCH
        self.status = self.path / STATUS
        self.jobs = self.path / JOBS
        self.logs = self.path / LOGS
        self.provenance = self.logs / PROVENANCE
        self.tensorboard = self.path / TENSORBOARD
        self.history = self.path / HISTORY
        self.lr_log = self.path / LR_LOG
        self.checkpoints = self.path / CHECKPOINTS
        self.best_checkpoint = self.checkpoints / BEST_CHECKPOINT
        self.latest_pointer = self.checkpoints / LATEST
        self.model_dir = self.path / MODEL
        self.final_model = self.model_dir / FINAL_MODEL
        self.model_spec = self.model_dir / MODEL_SPEC
        self.report = self.path / REPORT
        self.summary = self.report / SUMMARY
        self.predictions = self.report / PREDICTIONS
        self.writer_lock = self.path / WRITER_LOCK
        self.skipped = self.path / SKIPPED
        self.launch_lock = self.path / LAUNCH_LOCK

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def exists(self) -> bool:
        return self.config.is_file()

    def eval_record(self, split: str) -> Path:
        """report/eval-<split>.json, written by `launch eval`."""
        return self.report / f"eval-{split}.json"

    def read_status(self) -> dict:
        return read_json(self.status)

    def read_model_spec(self) -> dict:
        return read_json(self.model_spec)

    def read_latest(self) -> dict:
        """latest.json: the committed resumable checkpoint; {} when none was saved yet."""
        return read_json(self.latest_pointer)

    def latest_weights(self) -> Path | None:
        """The HDF5 file latest.json names, or None when the run saved no resumable checkpoint."""
        weights = self.read_latest().get("weights")
        return self.checkpoints / weights if weights else None

    def checkpoint(self, name: str) -> Path:
        """best -> checkpoints/best.h5, final -> model/final.h5, latest -> the file latest.json
        names, anything else is a path to an HDF5 model; raises RunDirError when it is missing."""
        if name == "best":
            path = self.best_checkpoint
        elif name == "final":
            path = self.final_model
        elif name == "latest":
            path = self.latest_weights()
            if path is None:
                raise RunDirError(f"{self.latest_pointer} does not exist: the run has saved no "
                                  "resumable checkpoint yet; choose --checkpoint best or final")
        else:
            path = Path(name).expanduser()
        if not path.is_file():
            raise RunDirError(f"checkpoint {name!r}: {path} does not exist; choose one of "
                              f"{', '.join(self.NAMED_CHECKPOINTS)} or an existing .h5 file")
        return path
