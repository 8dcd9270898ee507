"""Every sbatch script `launch` submits, as pure functions: config section in, text out.

One template family in slurm/: base.sbatch.j2 (directives, slurm.setup) extended by job.sbatch.j2
(a training run) and task.sbatch.j2 (one command per node: eval, predict, gpucheck, convert). Both
kinds get their directives, GPU request style, partition, account and QoS from the same code here.

CPUs: `slurm.cpus_per_task` is per task for every backend, exactly as sbatch reads it. Horovod runs
one task per GPU, so a node then needs gpus_per_node * cpus_per_task cores; lower cpus_per_task
when switching a config from mirrored to horovod.
"""
from __future__ import annotations

import dataclasses
import functools
import shlex
from pathlib import Path

import jinja2

from launcher import rundir
from launcher.config import BACKENDS, ConfigError, SlurmConfig

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "slurm"
TEMPLATE = "job.sbatch.j2"
TASK_TEMPLATE = "task.sbatch.j2"


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


def _site_values(slurm: SlurmConfig, nodes: int, per_node: int, logs: Path, stem: str) -> dict[str, object]:
    """The directives every job shares: geometry, time, name, logs, GPUs and the site's options."""
    logs_text = _slurm_path(Path(logs))
    values: dict[str, object] = {
        "nodes": nodes,
        "ntasks-per-node": per_node,
        "cpus-per-task": slurm.cpus_per_task,
        "time": slurm.time_min,  # a bare number is minutes to sbatch
        "job-name": slurm.job_name,
        "output": f"{logs_text}/{stem}-%j.out",
        "error": f"{logs_text}/{stem}-%j.err",
        **gpu_request(slurm),
    }
    for key in ("mem", "partition", "account", "qos"):
        if getattr(slurm, key):
            values[key] = getattr(slurm, key)
    if slurm.exclusive:
        values["exclusive"] = None
    return values


def _directive_lines(values: dict[str, object]) -> list[str]:
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


def directives(slurm: SlurmConfig, backend: str, run_dir: Path) -> list[str]:
    """`--key=value` strings of a training run, sorted, each value shell-quoted (sbatch parses
    quotes like a shell)."""
    if backend not in BACKENDS:
        raise ConfigError(f"runtime.backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "mirrored" and slurm.nodes > 1:
        raise ConfigError(f"backend mirrored runs on one node but slurm.nodes is {slurm.nodes}")
    nodes = 1 if backend == "mirrored" else slurm.nodes
    values = _site_values(slurm, nodes, tasks_per_node(slurm, backend), Path(run_dir) / rundir.LOGS, "slurm")
    values["open-mode"] = "append"  # a requeued job appends to the same log
    values["requeue"] = None
    if slurm.signal_lead_s >= slurm.time_min * 60:
        # The warning would arrive at once: the trainer would checkpoint and requeue forever.
        raise ConfigError(f"slurm.signal_lead_s {slurm.signal_lead_s} is not shorter than the time "
                          f"limit of {slurm.time_min} min; raise --time or set slurm.signal_lead_s=0")
    if slurm.signal_lead_s:
        # No "B:" prefix: the signal goes to the srun tasks, i.e. the trainer, not this shell.
        values["signal"] = f"USR1@{slurm.signal_lead_s}"
    return _directive_lines(values)


def srun_args(slurm: SlurmConfig, backend: str) -> list[str]:
    """Step geometry, stated again so the step matches the allocation whatever srun inherits."""
    per_node = tasks_per_node(slurm, backend)
    return [f"--ntasks={world_size(slurm, backend)}", f"--ntasks-per-node={per_node}",
            f"--cpus-per-task={slurm.cpus_per_task}"]


@functools.lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,  # block tags take no line of their own in the script
        lstrip_blocks=True,
        autoescape=False,  # shell, not HTML: quoting is the q filter's job
    )
    env.filters["q"] = lambda value: shlex.quote(str(value))
    return env


def _template() -> jinja2.Template:
    return _environment().get_template(TEMPLATE)


def _check_plain(**values: str) -> None:
    for what, value in values.items():
        # Config values are checked at load; paths can also come from --resume or sys.executable.
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ConfigError(f"{what.replace('_', ' ')} {value!r} contains a control character; "
                              "use a plain path")


def render_sbatch(slurm: SlurmConfig, backend: str, run_dir: Path, python: str,
                  worker_timeout_s: int) -> str:
    """Renders the batch script for one run.

    Args:
        slurm: the resolved slurm section (job_name already filled in).
        backend: mirrored | multiworker | horovod.
        run_dir: absolute run directory on shared storage.
        python: interpreter path on the compute nodes (one word; quoted as a whole).
        worker_timeout_s: seconds srun waits for the other tasks once one has exited.

    Returns:
        The script text. Raises ConfigError for a value sbatch could not read back.
    """
    if not slurm.job_name:
        raise ConfigError("slurm.job_name is empty; the launcher fills it with the run name")
    _check_plain(run_directory=str(run_dir), python=python)
    return _template().render(
        directives=directives(slurm, backend, Path(run_dir)),
        backend=backend,
        run_dir=str(run_dir),
        max_requeues=slurm.max_requeues,
        setup=slurm.setup,
        srun_args=srun_args(slurm, backend),
        python=python,
        worker_timeout_s=worker_timeout_s,
    )


@dataclasses.dataclass(frozen=True)
class TaskJob:
    """A job that runs one command once per node (launcher/jobs.py builds these).

    Attributes:
        kind: eval | predict | gpucheck | convert; names the logs (KIND-<job id>.out) and the script.
        command: the argument list each task runs, interpreter first, paths absolute.
        log_dir: folder on shared storage for SLURM's .out/.err files.
    """

    kind: str
    command: tuple[str, ...]
    log_dir: Path


def render_task_sbatch(slurm: SlurmConfig, job: TaskJob) -> str:
    """Renders the batch script of a task job on `slurm.nodes` nodes, one task each.

    `slurm` carries the whole request: nodes, gpus_per_node (0 for none), cpus_per_task, time,
    job name and the site's partition, account, QoS, GPU style and setup lines.
    """
    if not slurm.job_name:
        raise ConfigError("slurm.job_name is empty; the launcher fills it with the job's kind")
    _check_plain(log_folder=str(job.log_dir), **{f"argument {i}": a for i, a in enumerate(job.command)})
    values = _site_values(slurm, slurm.nodes, 1, job.log_dir, job.kind)
    return _environment().get_template(TASK_TEMPLATE).render(
        directives=_directive_lines(values),
        kind=job.kind,
        setup=slurm.setup,
        srun_args=srun_args(slurm, "multiworker"),
        command=list(job.command),
    )
