"""Safe resume: overrides the checkpoint can take, paths as the user meant them, and a run
copied back from its mirror. One writer per run directory is core/locks.py's.

Checks of overrides against the checkpoint (`check_changes`): keys that shape the model or the
optimizer's slots are refused, since the saved weights cannot load into another model. A changed
global batch (data.batch_size) or train.steps_per_epoch is refused rather than converted: the
saved optimizer step fixes the schedule's position, and converting it through epochs would also
need the data order of the cut epoch, which no checkpoint records. A completed run continues
only with more train.epochs than it has done.

TF-free: launch imports it on login nodes.
"""
from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

from core import rundir, runstatus, slurm, storage
from core.config import Config, ConfigError
from core.layout import LABELS_FILE
from core.locks import RunBusy
from launcher.container import is_local_image

HELD_S = 600  # a resume's job waits this long for launch to write its config.yaml (released at once)
ACQUIRE_TIMEOUT_S = 30  # contenders breaking a stale lock take turns within this
STALE_BREAKER_S = 30
LAUNCH_LOCK_MAX_AGE_S = 600  # a launch takes seconds; an older launch lock is a crashed launch's
# Keys the checkpoint's weights and optimizer slots were built with.
SHAPE_KEYS = ("model.name", "model.head_units", "model.trainable_layers", "data.image_size",
              "data.num_classes", "data.source", "data.synthetic_classes", "optimizer.name",
              "train.precision", "task", "text.max_tokens", "text.sequence_length", "text.embedding_dim",
              "text.hidden_dim", "text.number_of_layers", "text.bidirectional")
# Keys that fix where each epoch ends in optimizer steps, i.e. where the LR schedule stands.
STEP_KEYS = ("data.batch_size", "train.steps_per_epoch")


def _get(cfg: Config, dotted: str):
    if "." not in dotted:  # the top-level task
        return getattr(cfg, dotted)
    section, key = dotted.split(".")
    return getattr(getattr(cfg, section), key)


def check_changes(saved: Config, new: Config, run_dir: Path) -> None:
    """Refuses a resume the checkpoint cannot take, before anything is written or submitted.

    Args:
        saved: the run's config.yaml as it is.
        new: the same with this resume's overrides and flags.
        run_dir: the run directory.
    """
    done, checkpoint = rundir.epochs_done(run_dir)
    try:
        status = rundir.read_json(Path(run_dir) / rundir.STATUS)
    except ValueError:
        status = {}  # the checkpoint, not the status file, says what was trained
    if status.get("state") == "completed" or (checkpoint and done >= saved.train.epochs):
        if new.train.epochs <= done:
            raise ConfigError(f"{run_dir} completed {done} of {saved.train.epochs} epochs; resuming would "
                              f"rewrite its final model and report. To train on, pass train.epochs=N "
                              f"with N above {done} (the LR schedule then spans N epochs)")
    if checkpoint is None:
        return  # nothing trained yet: any change starts cleanly
    where = Path(run_dir) / rundir.CHECKPOINTS / checkpoint.get("weights", rundir.LATEST)
    for key in SHAPE_KEYS:
        if _get(saved, key) != _get(new, key):
            raise ConfigError(f"{key}={_get(new, key)!r} on resume: the checkpoint {where} was built with "
                              f"{_get(saved, key)!r} and cannot load into that model; drop the override, "
                              "or start a new run with launch --config")
    for key in STEP_KEYS:
        if _get(saved, key) != _get(new, key):
            raise ConfigError(f"{key}={_get(new, key)!r} on resume: the checkpoint's optimizer step "
                              f"({checkpoint.get('step')}) counts batches of {key}={_get(saved, key)!r}, so "
                              "the LR schedule would jump; drop the override, or start a new run")
    _check_model_spec(new, run_dir)


def _check_model_spec(new: Config, run_dir: Path) -> None:
    """The model the job wrote at start against the new config (catches an edited config.yaml)."""
    path = Path(run_dir) / rundir.MODEL / rundir.MODEL_SPEC
    try:
        spec = rundir.read_json(path)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    pairs = [("model.name", spec.get("architecture"), new.model.name),
             ("data.image_size", spec.get("image_size"), new.data.image_size)]
    if new.data.num_classes:
        pairs.append(("data.num_classes", spec.get("num_classes"), new.data.num_classes))
    for key, trained, asked in pairs:
        if trained is not None and trained != asked:
            raise ConfigError(f"{key} is {asked!r} but the run's model ({path}) has {trained!r}; set "
                              f"{key}={trained!r}, or start a new run with launch --config")
    found = _classes_in_data(new)
    if found is not None and spec.get("num_classes") not in (None, found):
        raise ConfigError(f"data.data_dir {new.data.data_dir} holds {found} classes but the run's model "
                          f"({path}) has {spec['num_classes']}; point data.data_dir at the run's data, "
                          "or start a new run with launch --config")


def _classes_in_data(cfg: Config) -> int | None:
    """How many classes the data dir holds (labels.json or class folders), None if unknown."""
    data = cfg.data
    if data.num_classes or data.source not in ("tfrecord", "folder") or not data.data_dir:
        return None  # an explicit data.num_classes is compared on its own
    root = Path(data.data_dir).expanduser()
    if data.source == "folder":
        train = root / data.train_split
        return sum(1 for p in train.iterdir() if p.is_dir()) if train.is_dir() else None
    try:
        labels = rundir.read_json(root / LABELS_FILE)
    except (OSError, ValueError):
        return None  # preflight names a damaged labels.json
    return len(labels["classes"]) if isinstance(labels.get("classes"), list) else None


def absolute_paths(cfg: Config, cwd: Path) -> None:
    """Makes the config's paths absolute against `cwd` (where launch ran), so a job, or a resume
    from another folder, reads the same files."""
    if cfg.data.data_dir and "://" not in cfg.data.data_dir:
        cfg.data.data_dir = str((cwd / Path(cfg.data.data_dir).expanduser()).resolve())
    if cfg.model.weights not in (None, "imagenet") and "://" not in cfg.model.weights:
        cfg.model.weights = str((cwd / Path(cfg.model.weights).expanduser()).resolve())
    if cfg.text.embeddings_file and "://" not in cfg.text.embeddings_file:
        cfg.text.embeddings_file = str((cwd / Path(cfg.text.embeddings_file).expanduser()).resolve())
    if cfg.container.image and is_local_image(cfg.container.engine or "pyxis", cfg.container.image):
        # Pyxis reads ./IMG against the job's working folder, not where launch ran.
        cfg.container.image = str((cwd / Path(cfg.container.image).expanduser()).resolve())
    cfg.runtime.run_root = str((cwd / Path(cfg.runtime.run_root).expanduser()).resolve())


def held(script: str, folder: Path) -> str:
    """The script with a start time HELD_S away, after its first line: a resume's job waits until
    its config.yaml is written, then `release` lets it start. Not `--hold`: sbatch accepts a held
    job without checking that any node can run it, and a refusal must come now.

    Should launch die before `release`, SLURM would still start the job after HELD_S, on files
    half written; so the job first looks for its id in FOLDER/.released, which only `release`
    writes, and otherwise stops in one line without touching the run."""
    lines = script.split("\n")
    last_directive = max(i for i, line in enumerate(lines) if line.startswith("#SBATCH ") or i == 0)
    check = ["# Submitted held by launch, which lets it start once the run's files are written (launcher/resume.py).",
             f"released={shlex.quote(str(folder / rundir.RELEASED))}",
             'job="${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}"',
             'grep -qx "$job" "$released" 2>/dev/null || { echo "launch: error: job $job was submitted held by a '
             'launch that ended before writing ${released%/*}; the run is as it was: launch --resume it again" >&2; '
             'exit 1; }']
    return "\n".join([lines[0], f"#SBATCH --begin=now+{HELD_S}", *lines[1:last_directive + 1], *check,
                      *lines[last_directive + 1:]])


def release(job_id: str, folder: Path) -> None:
    """Lets a job submitted by `held` start now: its id goes to FOLDER/.released, then SLURM
    moves its start time."""
    try:
        with open(folder / rundir.RELEASED, "a") as fh:
            fh.write(f"{job_id}\n")
    except OSError as err:
        cancel(job_id)
        raise RunBusy(f"cannot write {folder / rundir.RELEASED}: {err.strerror or err}; cancelled job {job_id}, "
                      "which would not have started without it; free space there and launch again") from None
    done = slurm.start_now(job_id)
    if done.returncode:
        raise RunBusy(f"job {job_id} was submitted to start in {HELD_S} s and could not be moved to now "
                      f"({done.stderr.strip()}); it starts by itself then, or run: scontrol update "
                      f"JobId={job_id} StartTime=now")


def cancel(job_id: str) -> None:
    slurm.cancel([job_id])


def from_mirror(url: str, run_root: str | None) -> Path:
    """A run mirrored at `url` (storage.mirror), copied into the local run root to be resumed
    there: a run can continue on another cluster, or after its run directory was lost. The copy
    goes to a temporary name first, so an interrupted download leaves no half run directory."""
    url = url.rstrip("/")
    root = Path(run_root or rundir.DEFAULT_RUN_ROOT).expanduser().resolve()
    target = root / url.rsplit("/", 1)[-1]
    if target.exists():
        raise ConfigError(f"{target} already exists: resume it with launch --resume {target}, or "
                          "pass another --run-root to copy the mirrored run there")
    root.mkdir(parents=True, exist_ok=True)
    partial = root / f".{target.name}.download"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        count = storage.download_tree(url, str(partial))
        if not rundir.is_run_dir(partial):
            raise ConfigError(f"{url} is not a mirrored run (no {rundir.CONFIG}); pass the URL of one "
                              "run under storage.mirror")
        _forget_jobs(partial, url)
        os.replace(partial, target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    print(f"launch: copied {count} files of {url} to {target}", file=sys.stderr)
    return target


def _forget_jobs(run_dir: Path, url: str) -> None:
    """The copy may continue on another cluster, where the job ids its files name (jobs.txt,
    status.json, the logs' names) are other people's jobs: those records move to
    logs/before-copy/, and status.json keeps no job id, so `launch runs`, `launch cancel` and the
    busy check ask SLURM only about jobs submitted for the copy."""
    earlier = run_dir / rundir.LOGS / rundir.COPIED_LOGS
    earlier.mkdir(parents=True, exist_ok=True)
    moved = [run_dir / rundir.JOBS, run_dir / rundir.LOGS / rundir.SUBMITIT]
    moved += [p for p in (run_dir / rundir.LOGS).iterdir() if rundir.JOB_FILE.match(p.name)]
    for path in moved:
        if path.exists():
            os.replace(path, earlier / path.name)
    status = runstatus.read_status(run_dir)
    if status:
        fields = {"job_id": None}
        if status.get("state") in runstatus.LIVE_STATES:  # mirrored mid-run: that job is not here
            fields.update(state="stopped", message=f"copied from {url} while it ran; not running here")
        runstatus.write_status(run_dir, **fields)
