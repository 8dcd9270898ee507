"""What every launch command shares: the packaged default config, the command-line flags that
set config keys (declared once here), and the config as a job sees it."""
from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

from core.config import Config
from launcher import packaged
from launcher.resume import absolute_paths

DEFAULT_CONFIG = packaged.config_folder() / "demo.yaml"
REPO = DEFAULT_CONFIG.parent.parent  # --help names the default from here: configs/demo.yaml

# argparse dest -> config key. Each flag also has an alias spelled like its key, so that config
# errors ("flag --gpus-per-node") name a flag that exists. First the site options every job
# command takes (launcher/commands.py: eval, predict, gpucheck, convert) ...
SITE_FLAGS = {
    "gpu_type": "slurm.gpu_type",
    "gpu_style": "slurm.gpu_style",
    "time": "slurm.time_min",
    "partition": "slurm.partition",
    "account": "slurm.account",
    "qos": "slurm.qos",
    "job_name": "slurm.job_name",
    "cluster": "runtime.cluster",
}
# ... and a training run's, which also sets its shape, backend and run root.
FLAGS = {
    "nodes": "slurm.nodes",
    "gpus": "slurm.gpus_per_node",
    "backend": "runtime.backend",
    "run_root": "runtime.run_root",
    **SITE_FLAGS,
}


def given_config(text: str | None) -> str | None:
    """--config as given, or, when no such file exists here, the packaged config it names
    (`configs/demo.yaml`, `demo.yaml`, `demo`: launcher/packaged.py). None stays None."""
    if not text or text.startswith("s3://") or Path(text).expanduser().exists():
        return text
    found = packaged.config_named(text)
    return str(found) if found else text


class PrintVersion(argparse.Action):
    """--version: the installed version, read only when asked."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs):
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, nargs=0,
                         help="print launch's version and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog} {packaged.version()}")
        parser.exit()


def for_job(cfg: Config, run_dir: Path, cwd: Path) -> Config:
    """`cfg` as the job will see it, filled in place: paths absolute (relative to where launch ran,
    as the user meant), the run's root and name, the interpreter, and the job name where none was
    set. A sweep's points all carry their array's job name, set before this."""
    absolute_paths(cfg, cwd)
    cfg.runtime.run_root = str(run_dir.parent)
    cfg.runtime.run_name = run_dir.name
    cfg.runtime.python = cfg.runtime.python or sys.executable
    cfg.slurm.job_name = cfg.slurm.job_name or run_dir.name
    return cfg


_SLURM_TIME = re.compile(r"(?:(?P<d>\d+)-)?(?P<a>\d+)(?::(?P<b>\d+))?(?::(?P<c>\d+))?")


def slurm_minutes(text: str) -> int:
    """A time limit as sbatch reads it, in whole minutes (rounded up): MM, MM:SS, HH:MM:SS,
    D-HH, D-HH:MM or D-HH:MM:SS."""
    found = _SLURM_TIME.fullmatch(text.strip())
    if not found:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time limit; write minutes (90), HH:MM:SS "
                                         "(1:30:00) or D-HH[:MM] (1-12) as sbatch does")
    d, a, b, c = (int(v) if v else None for v in found.group("d", "a", "b", "c"))
    if d is not None:  # D-HH[:MM[:SS]]
        seconds = ((d * 24 + a) * 60 + (b or 0)) * 60 + (c or 0)
    elif c is not None:  # HH:MM:SS
        seconds = (a * 60 + b) * 60 + c
    else:  # MM or MM:SS
        seconds = a * 60 + (b or 0)
    return math.ceil(seconds / 60)


def add_site_flags(p: argparse.ArgumentParser, job_name_help: str = "default: the run name",
                   cluster_help: str = "auto | slurm | local (runtime.cluster)") -> None:
    """The flags of SITE_FLAGS, as every command that submits a job takes them."""
    p.add_argument("--time", "--time-min", dest="time", type=slurm_minutes, metavar="TIME",
                   help="wall-clock limit: minutes, HH:MM:SS or D-HH[:MM] (slurm.time_min)")
    p.add_argument("--gpu-type", metavar="T", help="e.g. a100 (slurm.gpu_type)")
    p.add_argument("--gpu-style", metavar="S", help="gres | gpus-per-node | constraint")
    p.add_argument("--partition", metavar="P")
    p.add_argument("--account", metavar="A")
    p.add_argument("--qos", metavar="Q")
    p.add_argument("--job-name", metavar="NAME", help=job_name_help)
    p.add_argument("--cluster", metavar="C", help=cluster_help)
