"""The files `launch` reads at run time that are not Python: the sbatch templates and the configs.

The repository keeps them in slurm/ (*.sbatch.j2) and configs/ (*.yaml). An installed package
carries them inside `launcher`, as launcher/templates/ and launcher/configs/ (setup.py maps the
two folders there), found through importlib.resources. A checkout, installed editable or only
on PYTHONPATH, has no such folders in launcher/: its own slurm/ and configs/ are read, so each
checkout renders its own templates even when another one is the installed copy.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

DISTRIBUTION = "slurm-keras-train"  # setup.cfg's name
CONFIG_SUFFIX = ".yaml"


def _folder(inside: str, checkout: str) -> Path:
    # Installs unzipped (setup.cfg: zip_safe = False), so files() is a real folder on disk,
    # which is what jinja2's FileSystemLoader and the config reader need.
    installed = Path(str(resources.files("launcher") / inside))
    return installed if installed.is_dir() else Path(__file__).resolve().parent.parent / checkout


def template_folder() -> Path:
    """The folder of base.sbatch.j2, job.sbatch.j2, task.sbatch.j2 and container.sbatch.j2."""
    return _folder("templates", "slurm")


def config_folder() -> Path:
    """The folder of the configs that ship with launch (demo.yaml, sentiment_demo.yaml, ...)."""
    return _folder("configs", "configs")


def config_names() -> list[str]:
    """The packaged configs by name, without the suffix: ['demo', 'resnet50_imagenet', ...]."""
    return sorted(p.stem for p in config_folder().glob(f"*{CONFIG_SUFFIX}"))


def config_named(text: str) -> Path | None:
    """The packaged config that `text` names, or None: `demo`, `demo.yaml` and `configs/demo.yaml`
    all name configs/demo.yaml, so the command at the top of each config runs from any folder."""
    path = Path(text)
    if path.parent not in (Path("."), Path("configs")):
        return None
    name = path.name.removesuffix(CONFIG_SUFFIX)
    return config_folder() / f"{name}{CONFIG_SUFFIX}" if name in config_names() else None


def version() -> str:
    """The installed distribution's version; a checkout that was never installed has none."""
    from importlib import metadata  # only when asked: 25 ms that `launch --dry-run` need not pay

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown (not installed; pip install -e . in the checkout)"
