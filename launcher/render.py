"""The sbatch script as a pure function of the slurm config section, the backend and the run dir.

CPUs: `slurm.cpus_per_task` is per task for every backend, exactly as sbatch reads it. Horovod runs
one task per GPU, so a node then needs gpus_per_node * cpus_per_task cores; lower cpus_per_task
when switching a config from mirrored to horovod.
"""
from __future__ import annotations

import functools
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import jinja2

from launcher.config import BACKENDS, ConfigError, SlurmConfig

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "slurm"
TEMPLATE = "job.sbatch.j2"


@dataclass(frozen=True)
class JobArray:
    """A SLURM job array whose task i trains the run directory on line i + 1 of `runs_file`
    (a sweep, launcher/sweep.py). Every task gets the same resource request."""

    indices: str  # sbatch --array task ids without the limit: "0-3" or "1,3"
    max_parallel: int  # tasks running at once (the %N of --array); 0 = no limit
    runs_file: Path  # absolute; one run directory a line

    @property
    def spec(self) -> str:
        return f"{self.indices}%{self.max_parallel}" if self.max_parallel else self.indices


def tasks_per_node(slurm: SlurmConfig, backend: str) -> int:
    """Processes per node: one for the strategies that drive all local GPUs, one per GPU for Horovod."""
    return max(slurm.gpus_per_node, 1) if backend == "horovod" else 1


def world_size(slurm: SlurmConfig, backend: str) -> int:
    """Processes in the whole job (mirrored always runs one process on one node)."""
    nodes = 1 if backend == "mirrored" else slurm.nodes
    return nodes * tasks_per_node(slurm, backend)


def gpu_request(slurm: SlurmConfig) -> dict[str, str]:
    """The GPU directives for the site's request style, empty without GPUs."""
    count, kind = slurm.gpus_per_node, slurm.gpu_type
    if count == 0:
        return {"constraint": slurm.constraint} if slurm.constraint else {}
    typed = f"{kind}:{count}" if kind else str(count)
    if slurm.gpu_style == "gres":
        request = {"gres": f"gpu:{typed}"}
    elif slurm.gpu_style == "gpus-per-node":
        request = {"gpus-per-node": typed}
    else:  # constraint: sites that tell GPU models apart by node feature, not by GRES type
        request = {"gpus-per-node": str(count)}
    features = [kind] if kind and slurm.gpu_style == "constraint" else []
    features += [slurm.constraint] if slurm.constraint else []
    if features:
        request["constraint"] = "&".join(features)
    return request


def describe_request(slurm: SlurmConfig, backend: str) -> str:
    """What was asked, in sbatch's words, for error messages: `--gres=gpu:v100:2 on 2 nodes`."""
    nodes = 1 if backend == "mirrored" else slurm.nodes
    asked = [f"--{key}={value}" for key, value in sorted(gpu_request(slurm).items())]
    asked.append(f"--ntasks-per-node={tasks_per_node(slurm, backend)} --cpus-per-task={slurm.cpus_per_task}")
    where = f" in partition {slurm.partition}" if slurm.partition else ""
    return f"{' '.join(asked)} on {nodes} node{'s' if nodes > 1 else ''}{where}"


def _slurm_path(path: Path) -> str:
    # sbatch expands %j, %x, ... in --output/--error; %% is its escape for a literal %.
    return str(path).replace("%", "%%")


def directives(slurm: SlurmConfig, backend: str, run_dir: Path, array: JobArray | None = None) -> list[str]:
    """`--key=value` strings, sorted, each value shell-quoted (sbatch parses quotes like a shell).

    For a job array, `run_dir` is the sweep directory: SLURM opens the logs before a task knows
    its run directory, so they start there and the script moves its own output on."""
    if backend not in BACKENDS:
        raise ConfigError(f"runtime.backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "mirrored" and slurm.nodes > 1:
        raise ConfigError(f"backend mirrored runs on one node but slurm.nodes is {slurm.nodes}")
    logs = _slurm_path(Path(run_dir) / "logs")
    job = "%A_%a" if array else "%j"  # sbatch: array job id _ task id
    values: dict[str, object] = {
        "nodes": 1 if backend == "mirrored" else slurm.nodes,
        "ntasks-per-node": tasks_per_node(slurm, backend),
        "cpus-per-task": slurm.cpus_per_task,
        "time": slurm.time_min,  # a bare number is minutes to sbatch
        "job-name": slurm.job_name,
        "output": f"{logs}/slurm-{job}.out",
        "error": f"{logs}/slurm-{job}.err",
        "open-mode": "append",  # a requeued job appends to the same log
        "requeue": None,
        **gpu_request(slurm),
    }
    if slurm.signal_lead_s >= slurm.time_min * 60:
        # The warning would arrive at once: the trainer would checkpoint and requeue forever.
        raise ConfigError(f"slurm.signal_lead_s {slurm.signal_lead_s} is not shorter than the time "
                          f"limit of {slurm.time_min} min; raise --time or set slurm.signal_lead_s=0")
    if slurm.signal_lead_s:
        # No "B:" prefix: the signal goes to the srun tasks, i.e. the trainer, not this shell.
        values["signal"] = f"USR1@{slurm.signal_lead_s}"
    for key in ("mem", "partition", "account", "qos"):
        if getattr(slurm, key):
            values[key] = getattr(slurm, key)
    if slurm.exclusive:
        values["exclusive"] = None
    if array:
        values["array"] = array.spec
    if slurm.exports:
        values["export"] = ",".join(["ALL", *_export_names(slurm.exports)])
    for key, value in _extra_options(slurm.extra):
        if key == "no-requeue":  # the site's choice: the chief then continues the run in a new job
            values.pop("requeue", None)
        if key in values:
            raise ConfigError(f"slurm.extra --{key}: launch sets --{key} itself from the config; set it there "
                              "(slurm.*, --array via --sweep) and drop it from slurm.extra")
        values[key] = value
    lines = []
    for key, value in sorted(values.items()):
        if value is None:
            lines.append(f"--{key}")
            continue
        text = str(value)
        if "\\" in text:
            # sbatch drops backslashes in #SBATCH lines even inside quotes, unlike bash.
            raise ConfigError(f"--{key}={text}: sbatch reads backslashes in #SBATCH lines differently "
                              "from bash; choose a value (or run root) without '\\'")
        lines.append(f"--{key}={shlex.quote(text)}")
    return lines


_OPTION = re.compile(r"--([A-Za-z][A-Za-z0-9-]*)(?:=(.*))?", re.S)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _extra_options(extra: list[str]) -> list[tuple[str, str | None]]:
    """slurm.extra as (key, value or None); the value is quoted later like every other value."""
    options = []
    for text in extra:
        found = _OPTION.fullmatch(text)
        if not found:
            raise ConfigError(f"slurm.extra {text!r}: each item is one sbatch option written --key or "
                              "--key=value, e.g. --reservation=ml")
        if found.group(2) is not None and re.search(r"[\x00-\x1f\x7f]", found.group(2)):
            raise ConfigError(f"slurm.extra {text!r} contains a control character; write the option on one line")
        options.append((found.group(1), found.group(2)))
    return options


def _export_names(names: list[str]) -> list[str]:
    for name in names:
        if not _ENV_NAME.fullmatch(name):
            raise ConfigError(f"slurm.exports {name!r}: give environment variable names only (e.g. WANDB_API_KEY), "
                              "never NAME=value: the value would be written into the script")
    return sorted(set(names))


def srun_args(slurm: SlurmConfig, backend: str) -> list[str]:
    """Step geometry, stated again so the step matches the allocation whatever srun inherits."""
    per_node = tasks_per_node(slurm, backend)
    return [f"--ntasks={world_size(slurm, backend)}", f"--ntasks-per-node={per_node}",
            f"--cpus-per-task={slurm.cpus_per_task}"]


@functools.lru_cache(maxsize=1)
def _template() -> jinja2.Template:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,  # block tags take no line of their own in the script
        lstrip_blocks=True,
        autoescape=False,  # shell, not HTML: quoting is the q filter's job
    )
    env.filters["q"] = lambda value: shlex.quote(str(value))
    return env.get_template(TEMPLATE)


def render_sbatch(slurm: SlurmConfig, backend: str, run_dir: Path, python: str,
                  worker_timeout_s: int, array: JobArray | None = None) -> str:
    """Renders the batch script for one run, or for a job array of runs (a sweep).

    Args:
        slurm: the resolved slurm section (job_name already filled in).
        backend: mirrored | multiworker | horovod.
        run_dir: absolute run directory on shared storage.
        python: interpreter path on the compute nodes (one word; quoted as a whole).
        worker_timeout_s: seconds srun waits for the other tasks once one has exited.
        array: for a sweep: the tasks, and the file that maps a task id to its run directory;
            `run_dir` is then the sweep directory.

    Returns:
        The script text. Raises ConfigError for a value sbatch could not read back.
    """
    if not slurm.job_name:
        raise ConfigError("slurm.job_name is empty; the launcher fills it with the run name")
    paths = [("run directory", str(run_dir)), ("python", python)]
    paths += [("runs file", str(array.runs_file))] if array else []
    for what, value in paths:
        # Config values are checked at load; these two can also come from --resume or sys.executable.
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ConfigError(f"{what} {value!r} contains a control character; use a plain path")
    return _template().render(
        directives=directives(slurm, backend, Path(run_dir), array),
        array=array,
        backend=backend,
        run_dir=str(run_dir),
        max_requeues=slurm.max_requeues,
        setup=slurm.setup,
        srun_args=srun_args(slurm, backend),
        python=python,
        worker_timeout_s=worker_timeout_s,
    )
