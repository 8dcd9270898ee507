"""Every sbatch script `launch` submits, as pure functions: config section in, text out.

One template family in slurm/ (inside the package once installed: launcher/packaged.py):
base.sbatch.j2 (directives, slurm.setup) extended by job.sbatch.j2 (a training run) and
task.sbatch.j2 (one command per node: eval, predict, gpucheck, convert), which both take the
steps that run inside a container image from container.sbatch.j2. Both kinds get their
directives, GPU request style, partition, account and QoS from the same code here.

CPUs: `slurm.cpus_per_task` is per task for every backend, exactly as sbatch reads it. Horovod runs
one task per GPU, so a node then needs gpus_per_node * cpus_per_task cores; lower cpus_per_task
when switching a config from mirrored to horovod.
"""
from __future__ import annotations

import dataclasses
import functools
import re
import shlex
from pathlib import Path

import jinja2

from core import rundir
from core.config import BACKENDS, ConfigError, SlurmConfig
from launcher import packaged
from launcher.container import PYTHON, Container

TEMPLATE = "job.sbatch.j2"
TASK_TEMPLATE = "task.sbatch.j2"


@dataclasses.dataclass(frozen=True)
class JobArray:
    """A SLURM job array whose task i trains the run directory on line i + 1 of `runs_file`
    (a sweep, launcher/sweep.py). Every task gets the same resource request."""

    indices: str  # sbatch --array task ids without the limit: "0-3" or "1,3"
    max_parallel: int  # tasks running at once (the %N of --array); 0 = no limit
    runs_file: Path  # absolute; one run directory a line
    offset: int = 0  # task i trains line offset + i + 1: one of several arrays (launcher/sweep_arrays.py)

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


def _site_values(slurm: SlurmConfig, nodes: int, per_node: int, logs: Path, stem: str,
                 job: str = "%j") -> dict[str, object]:
    """The directives every job shares: geometry, time, name, logs, GPUs and the site's options
    (slurm.exports; slurm.extra is added last, by `_directive_lines`)."""
    logs_text = _slurm_path(Path(logs))
    values: dict[str, object] = {
        "nodes": nodes,
        "ntasks-per-node": per_node,
        "cpus-per-task": slurm.cpus_per_task,
        "time": slurm.time_min,  # a bare number is minutes to sbatch
        "job-name": slurm.job_name,
        "output": f"{logs_text}/{stem}-{job}.out",
        "error": f"{logs_text}/{stem}-{job}.err",
        **gpu_request(slurm),
    }
    for key in ("mem", "partition", "account", "qos"):
        if getattr(slurm, key):
            values[key] = getattr(slurm, key)
    if slurm.exclusive:
        values["exclusive"] = None
    if slurm.exports:
        values["export"] = ",".join(["ALL", *_export_names(slurm.exports)])
    return values


def _directive_lines(values: dict[str, object], extra: list[str]) -> list[str]:
    """The directives as sorted `--key=value` lines, slurm.extra's options merged in."""
    values = dict(values)
    for key, value in _extra_options(extra):
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


def directives(slurm: SlurmConfig, backend: str, run_dir: Path, array: JobArray | None = None) -> list[str]:
    """`--key=value` strings of a training run, sorted, each value shell-quoted (sbatch parses
    quotes like a shell).

    For a job array, `run_dir` is the sweep directory: SLURM opens the logs before a task knows
    its run directory, so they start there and the script moves its own output on."""
    if backend not in BACKENDS:
        raise ConfigError(f"runtime.backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "mirrored" and slurm.nodes > 1:
        raise ConfigError(f"backend mirrored runs on one node but slurm.nodes is {slurm.nodes}")
    nodes = 1 if backend == "mirrored" else slurm.nodes
    values = _site_values(slurm, nodes, tasks_per_node(slurm, backend), Path(run_dir) / rundir.LOGS, "slurm",
                          job="%A_%a" if array else "%j")  # sbatch: array job id _ task id
    values["open-mode"] = "append"  # a requeued job appends to the same log
    values["requeue"] = None
    if array:
        values["array"] = array.spec
    if slurm.signal_lead_s >= slurm.time_min * 60:
        # The warning would arrive at once: the trainer would checkpoint and requeue forever.
        raise ConfigError(f"slurm.signal_lead_s {slurm.signal_lead_s} is not shorter than the time "
                          f"limit of {slurm.time_min} min; raise --time or set slurm.signal_lead_s=0")
    if slurm.signal_lead_s:
        # No "B:" prefix: the signal goes to the srun tasks, i.e. the trainer, not this shell.
        values["signal"] = f"USR1@{slurm.signal_lead_s}"
    return _directive_lines(values, slurm.extra)


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
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(packaged.template_folder())),
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


# Run by each task before `apptainer exec`: hands the task's own variables (SLURM_PROCID, ...)
# that match $LAUNCH_CONTAINER_ENV to Apptainer, whose --cleanenv would drop them.
APPTAINER_ENV = ('while IFS= read -r name; do export "APPTAINERENV_$name=${!name}"; '
                 'done < <(compgen -e | grep -E "$LAUNCH_CONTAINER_ENV"); exec "$@"')


def container_words(container: Container) -> tuple[list[str], list[str]]:
    """(srun options, command prefix) that run a task inside the image, each word to be quoted."""
    mounts = ",".join(mount.spec() for mount in container.mounts)
    if container.engine == "pyxis":
        return ([f"--container-image={container.image}", f"--container-mounts={mounts}",
                 f"--container-workdir={container.workdir}"], [])
    return [], ["apptainer", "exec", "--nv", "--cleanenv", "--bind", mounts, "--pwd", container.workdir,
                container.image]


def _container_values(container: Container | None, nodes: int, cpus_per_task: int) -> dict[str, object]:
    """What slurm/container.sbatch.j2 reads: the words that put a step inside the image, and the
    image check's step (one task a node)."""
    srun_container, exec_prefix = container_words(container) if container else ([], [])
    if container:
        _check_plain(container_image=container.image, container_mounts=" ".join(srun_container + exec_prefix))
    return {"container": container, "srun_container": srun_container, "exec_prefix": exec_prefix,
            "apptainer_env": APPTAINER_ENV,
            "check_args": [f"--ntasks={nodes}", "--ntasks-per-node=1", f"--cpus-per-task={cpus_per_task}"]}


def render_sbatch(slurm: SlurmConfig, backend: str, run_dir: Path, python: str,
                  worker_timeout_s: int, array: JobArray | None = None,
                  container: Container | None = None) -> str:
    """Renders the batch script for one run, or for a job array of runs (a sweep).

    Args:
        slurm: the resolved slurm section (job_name already filled in).
        backend: mirrored | multiworker | horovod.
        run_dir: absolute run directory on shared storage.
        python: interpreter path on the compute nodes (one word; quoted as a whole).
        worker_timeout_s: seconds srun waits for the other tasks once one has exited.
        array: for a sweep: the tasks, and the file that maps a task id to its run directory;
            `run_dir` is then the sweep directory.
        container: the image every task runs in (launcher/container.py); `python` is then the image's.

    Returns:
        The script text. Raises ConfigError for a value sbatch could not read back.
    """
    if not slurm.job_name:
        raise ConfigError("slurm.job_name is empty; the launcher fills it with the run name")
    _check_plain(run_directory=str(run_dir), python=python,
                 **({"runs_file": str(array.runs_file)} if array else {}))
    nodes = 1 if backend == "mirrored" else slurm.nodes
    return _template().render(
        **_container_values(container, nodes, slurm.cpus_per_task),
        host_python=python,
        directives=directives(slurm, backend, Path(run_dir), array),
        array=array,
        backend=backend,
        run_dir=str(run_dir),
        max_requeues=slurm.max_requeues,
        setup=slurm.setup,
        srun_args=srun_args(slurm, backend),
        python=PYTHON if container else python,
        worker_timeout_s=worker_timeout_s,
    )


@dataclasses.dataclass(frozen=True)
class TaskJob:
    """A job that runs one command once per node (launcher/jobs.py builds these).

    Attributes:
        kind: eval | predict | gpucheck | convert; names the logs (KIND-<job id>.out) and the script.
        command: the argument list each task runs, interpreter first, paths absolute.
        log_dir: folder on shared storage for SLURM's .out/.err files.
        array: sbatch --array task ids ("0-3") for a job array whose tasks each run the command
            (with $SLURM_ARRAY_TASK_ID set); empty for one job. Logs are then KIND-<array>_<task>.out.
        every_node: each node's command runs to its end even when another node's fails (a check
            that must hear from every node); otherwise the first failure ends them all.
        run_dir: the run the command reads or writes, if any; in a container it is mounted, and
            the data folder of its config with it (launcher/container.py for_run).
        folders: further (host folder, what it is) the command reads or writes, mounted at their
            own path in a container: --images, the folder of --out, SRC, ...
    """

    kind: str
    command: tuple[str, ...]
    log_dir: Path
    array: str = ""
    every_node: bool = False
    run_dir: Path | None = None
    folders: tuple[tuple[str, str], ...] = ()


def render_task_sbatch(slurm: SlurmConfig, job: TaskJob, container: Container | None = None) -> str:
    """Renders the batch script of a task job on `slurm.nodes` nodes, one task each.

    `slurm` carries the whole request: nodes, gpus_per_node (0 for none), cpus_per_task, time,
    job name and the site's partition, account, QoS, GPU style and setup lines. With `container`
    the step runs inside the image as a training job's does, on the image's interpreter in place
    of the command's first word (the host's).
    """
    if not slurm.job_name:
        raise ConfigError("slurm.job_name is empty; the launcher fills it with the job's kind")
    _check_plain(log_folder=str(job.log_dir), **{f"argument {i}": a for i, a in enumerate(job.command)})
    command = [PYTHON, *job.command[1:]] if container else list(job.command)
    values = _site_values(slurm, slurm.nodes, 1, job.log_dir, job.kind, job="%A_%a" if job.array else "%j")
    if job.array:
        values["array"] = job.array
    return _environment().get_template(TASK_TEMPLATE).render(
        directives=_directive_lines(values, slurm.extra),
        kind=job.kind,
        array=job.array,
        every_node=job.every_node,
        setup=slurm.setup,
        srun_args=srun_args(slurm, "multiworker"),
        command=command,
        python=PYTHON,
        **_container_values(container, slurm.nodes, slurm.cpus_per_task),
    )
