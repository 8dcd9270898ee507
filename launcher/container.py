"""How a job runs inside a container image (the config's `container` section): a training run,
and the task jobs (eval, predict, gpucheck, convert) alike.

`for_run` turns the section into a `Container`: the engine, the image, and every folder the
job needs mounted at its own path (run directory, the project checkout, node-local scratch, the
data folder, a task's own folders, then the user's mounts), so the paths in the run's config
mean the same inside. launcher/render.py writes it into the script; `check` tests it before
the queue (launcher/preflight.py for training, launcher/jobs.py for task jobs).
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Sequence

from core import slurm as slurm_cli
from core.config import Config, ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PYTHON = "python3"  # the image's interpreter: runtime.python names the host's, not the image's
# What the job needs inside: SLURM's placement, the backends' settings, storage credentials, our own.
PASSED_PREFIXES = ("SLURM_", "SLURMD_", "TF_", "HOROVOD_", "AWS_", "LAUNCH_", "CUDA_", "NVIDIA_")
PASSED_NAMES = ("PYTHONPATH", "MPLCONFIGDIR", "HOME", "USER")


@dataclasses.dataclass(frozen=True)
class Mount:
    source: str
    target: str
    flags: str = ""

    def spec(self) -> str:
        """src:dst[:flags], as both --container-mounts and --bind take it."""
        return ":".join(filter(None, (self.source, self.target, self.flags)))


@dataclasses.dataclass(frozen=True)
class Container:
    """A resolved container: what render.py writes and preflight.py checks."""

    engine: str  # pyxis | apptainer
    image: str
    mounts: tuple[Mount, ...]
    workdir: str
    env: tuple[str, ...]  # extra names passed in (apptainer; Pyxis passes the whole environment)
    project: str  # the checkout, mounted at its own path: PYTHONPATH inside, so the trainer imports it
    scratch: str  # node-local folder, mounted; matplotlib's config goes there (the image's root is read-only)

    def passed_env(self) -> str:
        """The names Apptainer's --cleanenv lets in, as an extended regular expression."""
        names = [f"{prefix}.*" for prefix in PASSED_PREFIXES] + list(PASSED_NAMES) + list(self.env)
        return "^(" + "|".join(names) + ")$"


def is_local_image(engine: str, image: str) -> bool:
    """An image file on disk; Pyxis also takes registry names (ubuntu:22.04), Apptainer docker://."""
    if engine == "apptainer":
        return "://" not in image
    return image.startswith(("/", "./"))  # what Pyxis reads as a file


def parse_mount(text: str, where: str = "container.mounts") -> Mount:
    """`src:dst[:flags]` as a Mount; one line naming the item otherwise."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not all(parts[:2]):
        raise ConfigError(f"{where} {text!r}: each item is src:dst or src:dst:flags (e.g. /scratch:/scratch:ro)")
    for part in parts[:2]:
        if not part.startswith("/"):
            raise ConfigError(f"{where} {text!r}: {part!r} is not an absolute path")
        if "," in part:
            raise ConfigError(f"{where} {text!r}: Pyxis and Apptainer split mounts at commas; "
                              "choose a path without ','")
    return Mount(*parts)


def _own_mount(path: str, what: str) -> Mount:
    if ":" in path or "," in path:
        raise ConfigError(f"{what} {path!r} cannot be mounted into the container: Pyxis and Apptainer "
                          "read ':' and ',' in a mount; choose a path without them")
    return Mount(path, path)


def for_run(cfg: Config, run_dir: Path | None, also: Sequence[tuple[str, str]] = ()) -> Container | None:
    """The job's container, or None when the config names no image.

    Args:
        cfg: the resolved config (paths absolute).
        run_dir: the run directory, or a sweep's directory (its runs are inside it); None for a
            task job of no run (gpucheck, convert), which then gets no data folder either.
        also: further (host folder, what it is) a task job reads or writes (launcher/jobs.py).
    """
    section = cfg.container
    if not section.image:
        if section.engine:
            raise ConfigError(f"container.engine is {section.engine} but container.image is empty; "
                              "set container.image=/path/to/image")
        return None
    engine = section.engine or "pyxis"
    scratch = cfg.storage.scratch or "/tmp"
    own = [(str(run_dir), "run directory")] if run_dir else []
    own += [(str(PROJECT_ROOT), "project checkout"), (scratch, "storage.scratch")]
    if run_dir and cfg.data.data_dir and "://" not in cfg.data.data_dir:
        data = Path(cfg.data.data_dir)
        own.append((str(data if data.is_dir() or not data.exists() else data.parent), "data.data_dir"))
    own += also
    mounts: list[Mount] = []
    for path, what in own:
        if all(path != m.source for m in mounts):
            mounts.append(_own_mount(path, what))
    mounts += [parse_mount(text) for text in section.mounts]
    for name in section.env:
        if not name.replace("_", "a").isalnum() or name[:1].isdigit():
            raise ConfigError(f"container.env {name!r}: give variable names only (e.g. WANDB_API_KEY)")
    workdir = section.workdir or str(PROJECT_ROOT)
    if not workdir.startswith("/"):
        raise ConfigError(f"container.workdir {workdir!r} is not an absolute path")
    return Container(engine, section.image, tuple(mounts), workdir, tuple(sorted(set(section.env))),
                     str(PROJECT_ROOT), scratch)


def check(cfg: Config, to_slurm: bool, srun_help=slurm_cli.srun_help, which=shutil.which,
          folders: Sequence[tuple[str, str]] = ()) -> list[str]:
    """The container section before the queue (launcher/preflight.py, launcher/jobs.py): raises ConfigError for
    what would fail the job, returns warnings for what only the compute nodes can tell (Apptainer installed there
    only). `folders`: a task job's own (host folder, what it is), which must exist to be mounted."""
    box = cfg.container
    engine = box.engine or "pyxis"
    if not box.image:
        raise ConfigError(f"container.engine is {engine} but container.image is empty; set container.image")
    if not to_slurm:
        raise ConfigError("container.image is set but the run would start here, outside SLURM; "
                          "containers run on SLURM only: drop container.image or set runtime.cluster=slurm")
    local = is_local_image(engine, box.image)
    if engine == "pyxis" and not local and Path(box.image).exists():
        raise ConfigError(f"container.image {box.image!r}: Pyxis reads a relative path as an image name "
                          f"from a registry; give the image's absolute path ({Path(box.image).resolve()})")
    if local and not os.access(box.image, os.R_OK):
        what = "is not readable" if Path(box.image).exists() else "does not exist"
        raise ConfigError(f"container.image {box.image} {what}; build or copy the image there "
                          "(a squashfs for Pyxis: enroot import; a .sif for Apptainer: apptainer build)")
    notes = []
    if engine == "pyxis":
        text = srun_help()
        if text is not None and "--container-image" not in text:
            raise ConfigError("container.engine pyxis: srun here has no --container-image, so the Pyxis "
                              "plugin is not installed; ask the site, or use container.engine=apptainer")
    elif which("apptainer") is None:
        notes.append("apptainer is not on PATH here; the job needs it on the compute nodes")
    for text in box.mounts:
        source = parse_mount(text).source
        if not Path(source).exists():
            raise ConfigError(f"container.mounts {text!r}: {source} does not exist; create it or drop the mount")
    for path, what in folders:
        if not Path(path).is_dir():
            raise ConfigError(f"{what} {path} does not exist, so the container cannot mount it; create it first")
    return notes
