"""Safe resume: one writer per run directory, and overrides the checkpoint can take.

Two guards keep a second writer out of a run directory:
    launch   `launch --resume RUN` asks squeue about every job the run knows of (rundir.job_ids,
             and any job whose log goes to RUN/logs, which catches a hand-run sbatch still
             pending) and refuses, naming the job, while one is queued or running.
    job      the chief takes RUN/.writer.lock before it reads or writes anything; a job that
             finds it held by a live job exits at start with one line.

Why a lock file and not fcntl.flock: the run directory is on shared storage and the writers sit
on different nodes; flock over NFS is local to one client on some kernels and emulated on
others, and a lock held by a lost node is never released. The lock here is a file made with
os.link (atomic on NFS, the classic lockfile recipe) that names its holder: SLURM job id, host,
pid. A holder is stale when SLURM no longer has its job active, or, for a local run, when its
pid is gone on this host. A stale lock is broken by one contender at a time, and only while it
still names the stale holder, so two starters that both saw it stale still leave one holder.

Checks of overrides against the checkpoint (`check_changes`): keys that shape the model or the
optimizer's slots are refused, since the saved weights cannot load into another model. A changed
global batch (data.batch_size) or train.steps_per_epoch is refused rather than converted: the
saved optimizer step fixes the schedule's position, and converting it through epochs would also
need the data order of the cut epoch, which no checkpoint records. A completed run continues
only with more train.epochs than it has done.

TF-free: launch imports it on login nodes and the trainer before TensorFlow loads.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import yaml

from core import rundir, slurm
from core.slurm import ACTIVE
from core.config import Config, ConfigError
from launcher.preflight import LABELS_FILE

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


class RunBusy(ConfigError):
    """Another job or launch is writing the run directory; the message is one line."""


def _get(cfg: Config, dotted: str):
    if "." not in dotted:  # the top-level task
        return getattr(cfg, dotted)
    section, key = dotted.split(".")
    return getattr(getattr(cfg, section), key)


def _squeue(args: list[str]) -> subprocess.CompletedProcess | None:
    try:
        return slurm.squeue(args)  # None: no SLURM here (local mode), so no job can be queued
    except (OSError, subprocess.TimeoutExpired) as err:
        raise RunBusy(f"cannot ask squeue whether the run's jobs are still queued ({err}); "
                      "retry when the SLURM controller answers") from None


def job_state(job_id: str) -> str | None:
    """SLURM's state of an active job (`squeue -h -j ID -o %T`), None once it has left the queue."""
    done = _squeue(["-j", job_id, "-o", "%T"])
    if done is None or (done.returncode and "Invalid job id" in done.stderr):
        return None
    if done.returncode:
        raise RunBusy(f"squeue -j {job_id} failed ({done.stderr.strip()}); retry when the SLURM "
                      "controller answers")
    states = done.stdout.split()
    return states[0] if states and states[0] in ACTIVE else None


def active_jobs(run_dir: Path) -> dict[str, str]:
    """{job id: state} of the run's jobs that are queued or running."""
    found = {}
    ids = rundir.job_ids(run_dir)
    if ids:
        done = _squeue(["-j", ",".join(ids), "-o", "%i|%T"])
        if done is not None and done.returncode and "Invalid job id" not in done.stderr:
            raise RunBusy(f"squeue failed ({done.stderr.strip()}); retry when the SLURM controller "
                          "answers")
        for line in (done.stdout.splitlines() if done is not None else []):
            job, _, state = line.strip().partition("|")
            if state in ACTIVE:
                found[job] = state
    # A job submitted by hand writes its log to RUN/logs too; sbatch keeps %% as typed.
    logs = str(Path(run_dir) / rundir.LOGS).replace("%", "%%") + "/"
    done = _squeue(["--me", "-O", "JobID:|,State:|,STDOUT:|"])
    for line in (done.stdout.splitlines() if done is not None and not done.returncode else []):
        job, state, out = (line.split("|") + ["", ""])[:3]
        if out.startswith(logs) and state in ACTIVE:
            found[job.strip()] = state
    return found


def check_idle(run_dir: Path) -> None:
    """Raises RunBusy, naming the job, while a job of the run is queued or running (or a local
    run holds its writer lock)."""
    jobs = active_jobs(run_dir)
    if jobs:
        listed = ", ".join(f"{job} ({state})" for job, state in sorted(jobs.items()))
        first = min(jobs, key=lambda j: tuple(int(n) for n in j.split("_")))
        raise RunBusy(f"{run_dir} still has job {listed} in the queue; a second job would write the "
                      f"same checkpoints. Wait for it to end (squeue -j {first}) or scancel {first}, "
                      "then resume")
    holder = _read_holder(Path(run_dir) / rundir.WRITER_LOCK)
    if holder and (why := _alive(holder, None)):
        raise RunBusy(f"{run_dir} is being written by {why}; wait for it to end, then resume")


def _read_holder(path: Path) -> dict | None:
    try:
        holder = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # half-written by a killed holder: nobody can be named, so it is stale
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict) -> str:
    if holder.get("role") == "launch":
        who = "another launch --resume"
    else:
        who = f"job {holder['job_id']}" if holder.get("job_id") else "a local run"
    return f"{who} (host {holder.get('host', '?')}, pid {holder.get('pid', '?')})"


def _alive(holder: dict, my_job_id: str | None, max_age_s: float | None = None) -> str | None:
    """Why `holder` still counts as writing (one phrase), or None when its lock is stale."""
    job = holder.get("job_id")
    if not holder.get("token"):
        return None
    if job:
        if job == my_job_id:
            return None  # this job's own earlier start, before SLURM requeued it
        state = job_state(str(job))
        return f"{_describe(holder)}, {state} in SLURM" if state else None
    if max_age_s is not None:
        started = datetime.datetime.fromisoformat(holder.get("since", "1970-01-01T00:00:00+00:00"))
        if (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds() > max_age_s:
            return None
    if holder.get("host") != socket.gethostname():
        return f"{_describe(holder)}, which cannot be checked from here (delete {rundir.WRITER_LOCK} " \
               "in the run directory if that run has ended)"
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return None
    except (PermissionError, KeyError, ValueError):
        pass
    return f"{_describe(holder)}, still running"


class RunLock:
    """An exclusive lock file in the run directory, held by one job or launch at a time."""

    def __init__(self, path: Path, job_id: str | None = None, max_age_s: float | None = None,
                 role: str = "writer"):
        self.path = Path(path)
        self.job_id = job_id
        self.max_age_s = max_age_s
        self.me = {"role": role, "job_id": job_id, "host": socket.gethostname(), "pid": os.getpid(),
                   "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   "token": uuid.uuid4().hex}

    def acquire(self) -> None:
        """Takes the lock, breaking a stale one; raises RunBusy naming a live holder."""
        mine = self.path.with_name(f"{self.path.name}.{self.me['token']}")
        mine.write_text(json.dumps(self.me))
        deadline = time.monotonic() + ACQUIRE_TIMEOUT_S
        try:
            while time.monotonic() < deadline:
                if self._link(mine, self.path):
                    return
                holder = _read_holder(self.path)
                if holder is None:
                    continue  # released meanwhile
                if why := _alive(holder, self.job_id, self.max_age_s):
                    raise RunBusy(f"{self.path.parent} is held by {why}; stopping without touching it "
                                  "(wait for that one to end, or end it, then resume)")
                self._break(holder, mine)
            raise RunBusy(f"{self.path} stayed contended for {ACQUIRE_TIMEOUT_S} s; check squeue for "
                          "other jobs of the run")
        finally:
            mine.unlink(missing_ok=True)

    def _link(self, mine: Path, target: Path) -> bool:
        """Creates `target` as a link to `mine`; True when this process now owns it."""
        try:
            os.link(mine, target)  # atomic on NFS too, unlike O_EXCL on old clients
            return True
        except FileExistsError:
            # NFS may answer EEXIST to a retried link that in fact succeeded: the content says.
            return (_read_holder(target) or {}).get("token") == self.me["token"]

    def _break(self, stale: dict, mine: Path) -> None:
        """Removes a stale lock. One breaker at a time (RUN/.writer.lock.break), and only if the
        lock still names the stale holder, so a contender that just took it keeps it."""
        breaker = self.path.with_name(f"{self.path.name}.break")
        if not self._link(mine, breaker):
            with contextlib.suppress(OSError):  # a breaker killed inside these few lines
                if time.time() - breaker.stat().st_mtime > STALE_BREAKER_S:
                    breaker.unlink()
            time.sleep(0.05)
            return
        try:
            if _read_holder(self.path) == stale:
                self.path.unlink(missing_ok=True)
        finally:
            breaker.unlink(missing_ok=True)

    def release(self) -> None:
        """Removes the lock if this process still holds it."""
        if (_read_holder(self.path) or {}).get("token") == self.me["token"]:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def writer_lock(run_dir: Path, job_id: str | None, is_chief: bool) -> Iterator[None]:
    """The job's hold on its run directory: the chief takes RUN/.writer.lock (only the chief
    writes the run's files) and refuses a completed run with no epochs left to train, which a
    hand-run sbatch would otherwise rewrite. Other ranks follow the chief."""
    if not is_chief:
        yield
        return
    with RunLock(Path(run_dir) / rundir.WRITER_LOCK, job_id=job_id):
        done, _ = _epochs_done(run_dir)
        saved = yaml.safe_load((Path(run_dir) / rundir.CONFIG).read_text()) or {}
        epochs = (saved.get("train") or {}).get("epochs")
        finished = (rundir.read_json(Path(run_dir) / rundir.STATUS).get("state") == "completed")
        if finished and isinstance(epochs, int) and done >= epochs:  # not a report cut short
            raise ConfigError(f"{run_dir} has already trained {done} of {epochs} epochs; nothing to do. To "
                              f"train on: launch --resume {run_dir} train.epochs=N with N above {done}")
        yield


def launch_lock(run_dir: Path) -> RunLock:
    """Held by `launch --resume` from its checks to its submission, so two resumes started at
    once cannot both see an idle run."""
    return RunLock(Path(run_dir) / rundir.LAUNCH_LOCK, max_age_s=LAUNCH_LOCK_MAX_AGE_S, role="launch")


def _epochs_done(run_dir: Path) -> tuple[int, dict | None]:
    latest = Path(run_dir) / rundir.CHECKPOINTS / rundir.LATEST
    try:
        state = rundir.read_json(latest)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return int(state.get("epoch", 0)), (state or None)


def check_changes(saved: Config, new: Config, run_dir: Path) -> None:
    """Refuses a resume the checkpoint cannot take, before anything is written or submitted.

    Args:
        saved: the run's config.yaml as it is.
        new: the same with this resume's overrides and flags.
        run_dir: the run directory.
    """
    done, checkpoint = _epochs_done(run_dir)
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
    cfg.runtime.run_root = str((cwd / Path(cfg.runtime.run_root).expanduser()).resolve())


def held(script: str) -> str:
    """The script with a start time HELD_S away, after its first line: a resume's job waits until
    its config.yaml is written, then `release` lets it start. Not `--hold`: sbatch accepts a held
    job without checking that any node can run it, and a refusal must come now."""
    first, _, rest = script.partition("\n")
    return f"{first}\n#SBATCH --begin=now+{HELD_S}\n{rest}"


def release(job_id: str) -> None:
    """Lets a job submitted by `held` start now."""
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
    from core import storage

    url = url.rstrip("/")
    root = Path(run_root or "./runs").expanduser().resolve()
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
        os.replace(partial, target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    print(f"launch: copied {count} files of {url} to {target}", file=sys.stderr)
    return target
