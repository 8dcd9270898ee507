"""What every launch command shares: the packaged default config, the command-line flags that
set config keys (declared once here), and the config as a job sees it."""
from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

from typing import Callable

from core import rundir
from core.config import Config
from core.errors import UsageError
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


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """What sets a training run's config: the file, dotted overrides and the flags of FLAGS
    (`launch [train]`, `launch config`)."""
    p.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="config overrides, e.g. optimizer.lr=0.05 train.epochs=3")
    p.add_argument("--config", help=f"YAML config (default: {DEFAULT_CONFIG.relative_to(REPO)})")
    p.add_argument("-N", "--nodes", type=int, metavar="N", help="slurm.nodes")
    p.add_argument("--gpus", "--gpus-per-node", dest="gpus", type=int, metavar="N",
                   help="GPUs per node (slurm.gpus_per_node); sbatch's --gpus counts per job")
    p.add_argument("--backend", metavar="B", help="mirrored | multiworker | horovod")
    add_site_flags(p)
    p.add_argument("--run-root", metavar="DIR", default=rundir.run_root_from_env(),
                   help="folder that holds the run directories (runtime.run_root)")


def at_least_one(text: str) -> int:
    """argparse type of a count that must be 1 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is below the minimum 1")
    return value


def add_site_flags(p: argparse.ArgumentParser, job_name_help: str = "default: the run name",
                   cluster_help: str = "auto | slurm | local (runtime.cluster)") -> None:
    """The flags of SITE_FLAGS, as every command that submits a job takes them; sbatch's short
    spellings of the same options (-t, -p, -A, -q, -J) are accepted."""
    p.add_argument("-t", "--time", "--time-min", dest="time", type=slurm_minutes, metavar="TIME",
                   help="wall-clock limit: minutes, HH:MM:SS or D-HH[:MM] (slurm.time_min)")
    p.add_argument("--gpu-type", metavar="T", help="e.g. a100 (slurm.gpu_type)")
    p.add_argument("--gpu-style", metavar="S", help="gres | gpus-per-node | constraint")
    p.add_argument("-p", "--partition", metavar="P")
    p.add_argument("-A", "--account", metavar="A")
    p.add_argument("-q", "--qos", metavar="Q")
    p.add_argument("-J", "--job-name", metavar="NAME", help=job_name_help)
    p.add_argument("--cluster", metavar="C", help=cluster_help)


def _gres(value: str) -> str:
    parts = value.split(":")  # gpu[:type]:count
    if parts[0] != "gpu" or len(parts) not in (2, 3) or not parts[-1].isdigit():
        return "give GPUs per node with --gpus N and their type with --gpu-type T"
    typed = f" --gpu-type {parts[1]}" if len(parts) == 3 else ""
    return f"use --gpus {parts[-1]}{typed} (GPUs per node, as --gres counts them; sbatch's --gpus counts per job)"


def _extra(flag: str) -> Callable[[str], str]:
    return lambda value: f"pass it through as slurm.extra=[{flag}={value}]"


_TASKS = "launch starts one task per node (one per GPU with --backend horovod): give --nodes N and --gpus N"
_LOGS = "the job's output goes to RUN_DIR/logs/slurm-<job id>.out and .err (launch prints the path)"
# sbatch options launch spells another way: option -> (takes a value, the fix for that value).
SBATCH_ANSWERS: dict[str, tuple[bool, Callable[[str], str]]] = {
    "--mem": (True, lambda v: f"use slurm.mem={v} (memory per node, as sbatch's --mem)"),
    "--mem-per-cpu": (True, lambda v: "launch asks memory per node: use slurm.mem=<per-CPU memory x "
                                      "slurm.cpus_per_task>, e.g. slurm.mem=64G"),
    "--mem-per-gpu": (True, lambda v: "launch asks memory per node: use slurm.mem=<per-GPU memory x "
                                      "GPUs per node>, e.g. slurm.mem=64G"),
    "--gres": (True, _gres),
    "-G": (True, lambda v: f"launch's --gpus counts GPUs per node (sbatch's -G/--gpus per job): use "
                           f"--gpus N with N = {v} / nodes"),
    "--gpus-per-task": (True, lambda v: "launch runs one task per node, or one per GPU with --backend "
                                        "horovod: give GPUs per node with --gpus N"),
    "-c": (True, lambda v: f"use slurm.cpus_per_task={v}"),
    "--cpus-per-task": (True, lambda v: f"use slurm.cpus_per_task={v}"),
    "-n": (True, lambda v: _TASKS), "--ntasks": (True, lambda v: _TASKS),
    "--ntasks-per-node": (True, lambda v: _TASKS),
    "-C": (True, lambda v: f"use slurm.constraint={v}"),
    "--constraint": (True, lambda v: f"use slurm.constraint={v}"),
    "--exclusive": (False, lambda v: "use slurm.exclusive=true"),
    "-o": (True, lambda v: _LOGS), "--output": (True, lambda v: _LOGS),
    "-e": (True, lambda v: _LOGS), "--error": (True, lambda v: _LOGS),
    "--array": (True, lambda v: "launch --sweep KEY=V1,V2 makes the job array"),
    "-w": (True, _extra("--nodelist")), "--nodelist": (True, _extra("--nodelist")),
    "-x": (True, _extra("--exclude")), "--exclude": (True, _extra("--exclude")),
    "--reservation": (True, _extra("--reservation")),
    "--mail-type": (True, _extra("--mail-type")), "--mail-user": (True, _extra("--mail-user")),
    "--begin": (True, _extra("--begin")),
}


def sbatch_spelling(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """The one-line answer to the first sbatch option in `argv` that `parser` does not take,
    e.g. `--mem 16G` -> "use slurm.mem=16G"; None when there is none."""
    known = parser._option_string_actions  # noqa: SLF001 (argparse has no public lookup)
    i = 0
    while i < len(argv):
        token = argv[i]
        name, eq, value = token.partition("=")
        if token.startswith("-") and not token.startswith("--") and len(token) > 2 and not eq:
            name, value, eq = token[:2], token[2:], "joined"  # sbatch's -c8
        if token in known:
            takes_value = known[token].nargs != 0
            i += 2 if takes_value else 1  # a flag's value is never read as a flag here
            continue
        if name in SBATCH_ANSWERS and name not in known:
            takes_value, fix = SBATCH_ANSWERS[name]
            if takes_value and not eq:
                value = argv[i + 1] if i + 1 < len(argv) else "VALUE"
            shown = f"{name} {value}" if takes_value else name
            if name in ("-o", "--output") and "--out" in known:  # predict's own file
                return f"{shown}: the CSV goes where --out {value} says"
            return f"{shown} is sbatch's option, not launch's: {fix(value)}"
        i += 1
    return None


class LaunchParser(argparse.ArgumentParser):
    """argparse with one-line errors (UsageError) that answers sbatch's spellings of launch's
    options with launch's own (SBATCH_ANSWERS)."""

    def error(self, message: str):
        raise UsageError(f"{message} ({self.prog} --help lists the options)")

    def parse_args(self, args=None, namespace=None):
        self._answer_sbatch(args)
        return super().parse_args(args, namespace)

    def parse_intermixed_args(self, args=None, namespace=None):
        self._answer_sbatch(args)
        return super().parse_intermixed_args(args, namespace)

    def _answer_sbatch(self, args) -> None:
        if answer := sbatch_spelling(self, list(sys.argv[1:] if args is None else args)):
            raise UsageError(answer)
