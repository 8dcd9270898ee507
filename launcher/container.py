"""How a training job runs inside a container image (the config's `container` section).

`for_run` turns the section into a `Container`: the engine, the image, and every folder the
job needs mounted at its own path (run directory, data folder, node-local scratch, the project
checkout, then the user's mounts), so the paths in the run's config mean the same inside.
launcher/render.py writes it into the script; launcher/preflight.py checks it before the queue.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

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

    @property
    def local_image(self) -> bool:
        """An image file on disk (Pyxis also takes registry names such as ubuntu:22.04)."""
        if self.engine == "apptainer":
            return "://" not in self.image
        return self.image.startswith(("/", "./"))

    def passed_env(self) -> str:
        """The names Apptainer's --cleanenv lets in, as an extended regular expression."""
        names = [f"{prefix}.*" for prefix in PASSED_PREFIXES] + list(PASSED_NAMES) + list(self.env)
        return "^(" + "|".join(names) + ")$"


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


def for_run(cfg: Config, run_dir: Path) -> Container | None:
    """The job's container, or None when the config names no image.

    Args:
        cfg: the resolved config (paths absolute).
        run_dir: the run directory, or a sweep's directory (its runs are inside it).
    """
    section = cfg.container
    if not section.image:
        if section.engine:
            raise ConfigError(f"container.engine is {section.engine} but container.image is empty; "
                              "set container.image=/path/to/image")
        return None
    engine = section.engine or "pyxis"
    scratch = cfg.storage.scratch or "/tmp"
    own = [(str(run_dir), "run directory"), (str(PROJECT_ROOT), "project checkout"), (scratch, "storage.scratch")]
    if cfg.data.data_dir and "://" not in cfg.data.data_dir:
        data = Path(cfg.data.data_dir)
        own.append((str(data if data.is_dir() or not data.exists() else data.parent), "data.data_dir"))
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
