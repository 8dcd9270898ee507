"""Sweeps: one config, several points, one SLURM job array.

    launch --config C.yaml --sweep optimizer.lr=0.01,0.03 --sweep model.dropout=0.3,0.5 --max-parallel 2
    launch --resume SWEEP_DIR          # resubmits only the points that have not completed

A config file may carry the sweep itself, as a grid or as an explicit list of points:

    sweep:
      grid: {optimizer.lr: [0.01, 0.03], model.dropout: [0.3, 0.5]}   # or:
      points: [{optimizer.lr: 0.01, model.dropout: 0.3}, {optimizer.lr: 0.1, model.dropout: 0.5}]
      max_parallel: 2

`--sweep` axes join the file's grid (a key given in both takes the command line's values). The
grid is the product of the axes, the last key varying fastest. A point's values are applied
after the file and the dotted overrides.

The sweep directory (RUN_ROOT/<name>-sweep-<timestamp>/) holds sweep.yaml (the points and their
run directories), runs.txt (one run directory a line: array task i trains line i + 1),
job.sbatch (the array script), jobs.txt and logs/, and one ordinary run directory per point,
NNN-<values>/, which `launch --resume` also continues on its own.

The points come from launcher/sweep_points.py. Every point is validated as a single launch
is, config, rendering and preflight, before anything is created; one bad point refuses the
whole sweep, naming it. Past the cluster's MaxArraySize the points go to several arrays
(launcher/sweep_arrays.py; job.sbatch, job-2.sbatch, ...). A job array has one
resource request, so slurm.* and runtime.* keys cannot be swept. Without SLURM the points run
here one after another, in the same directories.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from core import fsutil, rundir
from core.config import Config, ConfigError, config_stem, load_config
from core.storage import is_remote
from launcher import container, options, preflight, resume, sweep_arrays
from launcher.render import JobArray, describe_request, render_sbatch, world_size
from launcher.submit import Target, run_local, submit_slurm
from launcher.sweep_arrays import SweepArray
from launcher.sweep_points import (  # noqa: F401
    Point,
    PointConfigs,
    make_points,
    parse_axes,
    read_block,
    show,
)

SWEEP_FILE, RUNS_FILE, is_sweep_dir = rundir.SWEEP_FILE, rundir.RUNS_FILE, rundir.is_sweep_dir


@dataclass
class Planned:
    """A point made concrete: its resolved config and run directory."""

    point: Point
    run_dir: Path
    cfg: Config


def _max_parallel(args: argparse.Namespace, block: dict) -> int:
    """Tasks of the array running at once; 0 (no limit) when neither the flag nor the block
    says. An explicit 0 is refused: it would read as "none at once"."""
    if args.max_parallel is not None:  # checked by its argparse type: 1 or more
        return args.max_parallel
    if "max_parallel" not in block:
        return 0
    value = block["max_parallel"]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"sweep.max_parallel {value!r}: expected a whole number of tasks at once, 1 or "
                          "more; leave it out for no limit")
    return value


def wanted(args: argparse.Namespace, default_config: Path) -> bool:
    """This launch is a sweep: --sweep or --max-parallel given, a config with a sweep block, or a
    resume of a sweep directory."""
    if args.resume:
        if is_sweep_dir(Path(args.resume).expanduser()):
            return True
        if args.sweep or args.max_parallel is not None:
            raise ConfigError(f"--resume {args.resume} continues one run; --sweep and --max-parallel start "
                              "a sweep (launch --config ... --sweep) or resume one (launch --resume SWEEP_DIR)")
        return False
    if args.sweep or args.max_parallel is not None:
        return True
    return bool(read_block(args.config or default_config))  # a file or an s3:// URL


def plan(points: list[Point], configs_of: list[Config], sweep_dir: Path, job_name: str) -> list[Planned]:
    """Resolves every point for `sweep_dir`. Every point carries the array's job name, so a point
    resumed on its own (launch --resume RUN_DIR) still shows as part of the sweep in squeue."""
    cwd = Path.cwd()
    planned = []
    for point, cfg in zip(points, configs_of):
        run_dir = sweep_dir / point.dir_name()
        cfg = copy.copy(cfg)
        for section in ("data", "model", "runtime", "slurm"):
            setattr(cfg, section, copy.copy(getattr(cfg, section)))
        cfg.slurm.job_name = job_name
        planned.append(Planned(point, run_dir, options.for_job(cfg, run_dir, cwd)))
    return planned


def array_script(planned: list[Planned], sweep_dir: Path, indices: str, max_parallel: int,
                 job_name: str, offset: int = 0) -> str:
    """The array script: the first point's request (every point's, as slurm.* is not swept)."""
    cfg = copy.deepcopy(planned[0].cfg)
    cfg.slurm.job_name = job_name
    return render_sbatch(cfg.slurm, cfg.runtime.backend, sweep_dir, cfg.runtime.python,
                         cfg.runtime.worker_timeout_s,
                         JobArray(indices, max_parallel, sweep_dir / RUNS_FILE, offset),
                         container=container.for_run(cfg, sweep_dir))


def arrays_of(planned: list[Planned], sweep_dir: Path, max_parallel: int, job_name: str,
              limit: int | None) -> list[SweepArray]:
    """The points as job arrays whose task ids stay below `limit` (MaxArraySize), scripts rendered."""
    arrays = sweep_arrays.split(planned, limit)
    for array in arrays:
        array.script = array_script(array.planned, sweep_dir, array.task_ids(), max_parallel, job_name,
                                    array.offset)
    return arrays


def array_limit(target: Target) -> int | None:
    """MaxArraySize where the sweep goes to SLURM; None when the points run here."""
    return sweep_arrays.max_array_size() if target.for_slurm else None


def print_scripts(arrays: list[SweepArray]) -> None:
    """--dry-run: every array's script, one after another."""
    sys.stdout.write("\n".join(array.script for array in arrays))


def preflight_points(planned: list[Planned], to_slurm: bool, dry_run: bool) -> None:
    """The single launch's checks, once per distinct data/request (1,000 points of one data set
    ask SLURM once); a problem names the first point that has it."""
    seen = set()
    for item in planned:
        cfg = item.cfg
        key = repr((cfg.data, dataclasses.replace(cfg.slurm, job_name=""), cfg.runtime.backend,
                    cfg.runtime.run_root))
        if key in seen:
            continue
        seen.add(key)
        try:
            notes = preflight.run(cfg, to_slurm=to_slurm, dry_run=dry_run)
        except ConfigError as err:
            raise ConfigError(f"sweep point {item.point.index} ({item.point.label()}): {err}") from None
        for note in notes:
            print(f"launch: warning: {note}", file=sys.stderr)


def point_table(planned: list[Planned]) -> str:
    keys = list(dict.fromkeys(k for p in planned for k in p.point.values))
    rows = [("POINT", *keys, "RUN DIR")]
    rows += [(str(p.point.index), *(show(p.point.values.get(k, "-")) for k in keys), p.run_dir.name)
             for p in planned]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join([*(c.ljust(w) for c, w in zip(r, widths)), r[-1]]) for r in rows)


def dump_config(cfg: Config, dumped: dict[str, str]) -> str:
    """configs.dump(cfg), section by section, each distinct section dumped once: most sections
    of a sweep's points are the same, and YAML's representer is most of a 1,000-point write."""
    parts = []
    for section in dataclasses.fields(Config):
        value = getattr(cfg, section.name)
        key = f"{section.name}:{value!r}"
        if key not in dumped:
            plain = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value  # task: a name
            dumped[key] = yaml.dump({section.name: plain}, sort_keys=False,
                                    Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper))
        parts.append(dumped[key])
    return "".join(parts)


def _write(sweep_dir: Path, planned: list[Planned], arrays: list[SweepArray], source: dict) -> None:
    """The new sweep directory's files. The points' files are plain writes (no fsync each): the
    folder is new, nothing reads it yet and a failure removes it whole; sweep.yaml comes last.
    A point's run directory holds only its config.yaml until its task starts (the task makes
    logs/); the script it runs is the sweep's job.sbatch, and `launch --resume RUN_DIR` of one
    point writes that point's own."""
    dumped: dict[str, str] = {}
    for item in planned:
        item.run_dir.mkdir(exist_ok=True)
        (item.run_dir / rundir.CONFIG).write_text(dump_config(item.cfg, dumped))
    fsutil.atomic_write_text(sweep_dir / RUNS_FILE, "".join(f"{p.run_dir}\n" for p in planned))
    record = {**source, "points": [{"index": p.point.index, "values": p.point.values,
                                    "run_dir": p.run_dir.name} for p in planned]}
    fsutil.atomic_write_text(sweep_dir / SWEEP_FILE, yaml.safe_dump(record, sort_keys=False))
    write_scripts(sweep_dir, arrays)


def launch(args: argparse.Namespace, flags: dict[str, Any], default_config: Path) -> int:
    """A new sweep (`launch --sweep ...`); launcher/sweep_resume.py resumes one."""
    path = args.config or default_config  # a file or an s3:// URL
    block = read_block(path)
    points = make_points(block, parse_axes(args.sweep or []), str(path))
    if len(points) < 2 and not block and not args.sweep:
        raise ConfigError("--max-parallel needs a sweep: add --sweep section.key=v1,v2 or a sweep: block")
    max_parallel = _max_parallel(args, block)
    base = load_config(path, args.overrides, flags)
    name = f"{base.runtime.run_name or config_stem(path)}-sweep"
    point_configs, making = [], PointConfigs(base)
    for point in points:
        try:
            point_configs.append(making.of(point))
        except ConfigError as err:
            raise ConfigError(f"sweep point {point.index} ({point.label()}): {err}") from None
    target = Target.choose(base.runtime.cluster, dry_run=args.dry_run, emit=args.emit_sbatch)
    sweep_dir = rundir.planned_run_dir(base.runtime.run_root, name)
    job_name = base.slurm.job_name or name
    planned = plan(points, point_configs, sweep_dir, job_name)
    limit = array_limit(target)
    arrays = arrays_of(planned, sweep_dir, max_parallel, job_name, limit)
    if len(arrays) > 1 and args.emit_sbatch:
        raise ConfigError(f"a sweep of {len(points)} points needs {len(arrays)} job arrays on this cluster "
                          f"(MaxArraySize {limit}) and --emit-sbatch writes one script; submit it with "
                          "launch (without --emit-sbatch), which splits it")
    if not args.no_preflight:
        preflight_points(planned, to_slurm=target.for_slurm, dry_run=args.dry_run)
    sweep_arrays.say_split(arrays, limit)
    if args.dry_run:
        print_scripts(arrays)
        shape = (f"one job array (--array={script_array(arrays[0].script)})" if len(arrays) == 1 else
                 f"{len(arrays)} job arrays (" + ", ".join(f"--array={script_array(a.script)} from point "
                                                          f"{a.offset}" for a in arrays) + ")")
        print(f"launch: sweep of {len(points)} points as {shape}:\n"
              f"{point_table(planned)}", file=sys.stderr)
        if note := target.dry_run_note("the points would run here one after another"):
            print(f"launch: note: {note}", file=sys.stderr)
        return 0
    sweep_dir = rundir.new_run_dir(base.runtime.run_root, name)
    try:
        planned = plan(points, point_configs, sweep_dir, job_name)
        arrays = arrays_of(planned, sweep_dir, max_parallel, job_name, limit)
        _write(sweep_dir, planned, arrays, {"config": _where(path), "overrides": list(args.overrides),
                                            "job_name": job_name, "max_parallel": max_parallel})
    except OSError as err:
        shutil.rmtree(sweep_dir, ignore_errors=True)
        raise ConfigError(f"cannot write the sweep directory {sweep_dir}: {err.strerror or err}; free space "
                          "there or pass --run-root elsewhere") from None
    return start(target, planned, sweep_dir, arrays, fresh=True)


def script_array(script: str) -> str:
    found = re.search(r"^#SBATCH --array=(\S+)$", script, re.MULTILINE)
    return found.group(1) if found else "?"


def _where(path: Path | str) -> str:
    """The config's absolute path, or its s3:// URL as given."""
    return str(path) if is_remote(path) else str(Path(path).resolve())


def script_names(arrays: list[SweepArray]) -> list[str]:
    """job.sbatch for the (first) array; job-2.sbatch, ... for the others of a split sweep."""
    return [rundir.SBATCH if k == 0 else f"job-{k + 1}.sbatch" for k in range(len(arrays))]


def write_scripts(sweep_dir: Path, arrays: list[SweepArray]) -> None:
    for name, array in zip(script_names(arrays), arrays):
        fsutil.atomic_write_text(sweep_dir / name, array.script)


def start(target: Target, planned: list[Planned], sweep_dir: Path, arrays: list[SweepArray], fresh: bool,
          before_release: Callable[[], None] | None = None) -> int:
    """Emits, runs here one point after another, or submits the array(s).

    fresh: the sweep directory was made for this launch (removed if sbatch refuses). Otherwise
    (a resume), and whenever there are several arrays, the arrays are submitted held,
    `before_release` writes the points' files, and only then may they start; if sbatch refuses
    one of them or that write fails, every array already submitted is cancelled."""
    if target.emit:
        fsutil.atomic_write_text(target.emit, arrays[0].script)
        print(f"sweep dir: {sweep_dir}\nwrote {target.emit} (also {sweep_dir / rundir.SBATCH}); "
              f"submit it with:\n  sbatch {shlex.quote(str(target.emit))}")
        return 0
    if target.runs_here:
        return run_here(planned, target.why)
    cfg = planned[0].cfg
    asked = describe_request(cfg.slurm, cfg.runtime.backend)
    ids = sweep_arrays.submit_all(arrays, lambda text: submit_slurm(text, sweep_dir, asked, fresh=fresh),
                                  held=not fresh, sweep_dir=sweep_dir)
    for job_id, array in zip(ids, arrays):
        record_jobs(sweep_dir, array, job_id)
    if not fresh or len(arrays) > 1:
        try:
            if before_release:
                before_release()
        except OSError as err:
            for job_id in ids:
                resume.cancel(job_id)
            raise ConfigError(f"cannot write {err.filename or sweep_dir}: {err.strerror or err}; cancelled "
                              f"job array(s) {', '.join(ids)}; free space there and resume again") from None
        sweep_arrays.release_all(ids, sweep_dir)
    for job_id, array in zip(ids, arrays):
        print(f"submitted job array {job_id} (--array={script_array(array.script)}): {len(array.planned)} "
              f"point(s) ({array.points()}), {cfg.runtime.backend} on {cfg.slurm.nodes} node(s) each")
    print(f"sweep dir:   {sweep_dir}")
    print(point_table(planned))
    print(f"follow:      squeue -j {','.join(ids)}; launch runs --sweep {shlex.quote(str(sweep_dir))}")
    print(f"tensorboard: tensorboard --logdir {shlex.quote(str(sweep_dir))}")
    for job_id in ids:
        if warning := preflight.job_warning(job_id):
            print(f"launch: warning: {warning}", file=sys.stderr)
    return 0


def record_jobs(sweep_dir: Path, array: SweepArray, job_id: str) -> None:
    """jobs.txt of the sweep gets the array id; each point's gets its task, ARRAY_TASK."""
    with contextlib.suppress(OSError):  # the logs' names record the ids as well
        rundir.record_job(sweep_dir, job_id)
        for item in array.planned:
            rundir.record_job(item.run_dir, f"{job_id}_{item.point.index - array.offset}")


def run_here(planned: list[Planned], why: str) -> int:
    """No SLURM: each point in turn, in its run directory; returns the first failure's exit code."""
    first_failure = 0
    for item in planned:
        cfg = item.cfg
        print(f"launch: sweep point {item.point.index} ({item.point.label()}) running locally ({why}); "
              f"run dir {item.run_dir}", flush=True)

        code = run_local(item.run_dir, cfg.runtime.python, world_size(cfg.slurm, cfg.runtime.backend),
                         cfg.runtime.worker_timeout_s, cfg.runtime.port)
        if code == 128 + 2:  # interrupted: stop the sweep, not just this point
            return code
        if code:
            print(f"launch: sweep point {item.point.index} ended with exit code {code}; going on with "
                  "the next", file=sys.stderr, flush=True)
        first_failure = first_failure or code
    return first_failure
