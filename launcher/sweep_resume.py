"""`launch --resume SWEEP_DIR`: one new job array of the points that have not completed.

Each point continues in its own run directory from its own checkpoint, exactly as
`launch --resume RUN_DIR` would continue it; overrides and flags apply to every resumed point
and are checked against each point's checkpoint (launcher/resume.py). The array keeps the
sweep's task ids, so task i still trains line i + 1 of runs.txt: `--array=1,3%2`.

Refused while a task of the sweep is queued or running, naming it. The new array is submitted
to start later, its id recorded, the points' config.yaml written, and only then released, so
a refused resume leaves every point as it was (the single resume's order, launcher/cli.py).
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import yaml

from core import fsutil, locks, rundir, runstatus
from core.config import ConfigError, dump, load_config
from launcher import options, resume, sweep_arrays
from launcher.submit import Target
from launcher.sweep import (RUNS_FILE, SWEEP_FILE, Planned, Point, array_limit, arrays_of, point_table,
                            preflight_points, print_scripts, script_array, start, write_scripts)


def read_sweep(sweep_dir: Path) -> dict:
    """sweep.yaml, checked enough to resume from; errors name the file."""
    path = sweep_dir / SWEEP_FILE
    try:
        record = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path} cannot be read ({err}); it is written by launch --sweep") from None
    if not isinstance(record, dict) or not isinstance(record.get("points"), list):
        raise ConfigError(f"{path} has no list of points; it is written by launch --sweep")
    return record


def points_of(sweep_dir: Path, record: dict) -> list[tuple[Point, Path]]:
    return [(Point(int(p["index"]), dict(p.get("values") or {})), sweep_dir / str(p["run_dir"]))
            for p in record["points"]]


def unfinished(points: list[tuple[Point, Path]]) -> list[tuple[Point, Path]]:
    """Points whose run has not completed (status.json), in index order."""
    return [(p, d) for p, d in points if runstatus.read_status(d).get("state") != "completed"]


def resume_sweep(args: argparse.Namespace, flags: dict[str, Any]) -> int:
    if args.config or args.sweep:
        raise ConfigError("--resume of a sweep continues its points with their own config.yaml; drop "
                          "--config/--sweep and change values with flags or section.key=value")
    sweep_dir = Path(args.resume).expanduser().resolve()
    record = read_sweep(sweep_dir)
    if not (sweep_dir / RUNS_FILE).is_file():
        raise ConfigError(f"{sweep_dir / RUNS_FILE} is missing: array tasks find their run directory there; "
                          "resume the points one by one with launch --resume RUN_DIR")
    everything = points_of(sweep_dir, record)
    todo = unfinished(everything)
    if not todo:
        raise ConfigError(f"{sweep_dir}: all {len(everything)} points have completed; nothing to resume. "
                          "To train one on: launch --resume RUN_DIR train.epochs=N")
    planned = []
    for point, run_dir in todo:
        try:
            if not rundir.is_run_dir(run_dir):
                raise ConfigError(f"{run_dir} is not a run directory (no {rundir.CONFIG})")
            cfg = load_config(run_dir / rundir.CONFIG, args.overrides, flags)
            resume.check_changes(load_config(run_dir / rundir.CONFIG), cfg, run_dir)
            cfg = options.for_job(copy.deepcopy(cfg), run_dir, Path.cwd())
            planned.append(Planned(point, run_dir, cfg))
        except ConfigError as err:
            raise ConfigError(f"sweep point {point.index} ({point.label()}): {err}") from None
    requests = {repr((p.cfg.slurm.__class__(**{**vars(p.cfg.slurm), "job_name": ""}), p.cfg.runtime.backend))
                for p in planned}
    if len(requests) > 1:
        raise ConfigError(f"{sweep_dir}: the points' config.yaml ask for different resources (slurm.*), "
                          "which one job array cannot; resume them one by one with launch --resume RUN_DIR")
    target = Target.choose(planned[0].cfg.runtime.cluster, dry_run=args.dry_run, emit=args.emit_sbatch)
    max_parallel = args.max_parallel if args.max_parallel is not None else int(record.get("max_parallel") or 0)
    limit = array_limit(target)
    arrays = arrays_of(planned, sweep_dir, max_parallel, record.get("job_name") or sweep_dir.name, limit)
    if len(arrays) > 1 and args.emit_sbatch:
        raise ConfigError(f"resuming {len(planned)} points needs {len(arrays)} job arrays on this cluster "
                          f"(MaxArraySize {limit}) and --emit-sbatch writes one script; resume without it")
    if not args.no_preflight:
        preflight_points(planned, to_slurm=target.for_slurm, dry_run=args.dry_run)
    sweep_arrays.say_split(arrays, limit)
    print(f"launch: resuming {len(planned)} of {len(everything)} points of {sweep_dir.name} (the others "
          f"completed): " + ", ".join(f"--array={script_array(a.script)}" for a in arrays), flush=True)
    if args.dry_run:
        print_scripts(arrays)
        print(point_table(planned))
        return 0
    with locks.launch_lock(sweep_dir):
        locks.check_idle(sweep_dir)
        for item in planned:
            locks.check_idle(item.run_dir)
        if not target.submits:
            _write_resumed(sweep_dir, planned, arrays)
            return start(target, planned, sweep_dir, arrays, fresh=True)
        return start(target, planned, sweep_dir, arrays, fresh=False,
                     before_release=lambda: _write_resumed(sweep_dir, planned, arrays))


def _write_resumed(sweep_dir: Path, planned: list[Planned], arrays: list) -> None:
    """The resumed points' config.yaml and the array script; runs.txt and sweep.yaml stay as
    they are (every point keeps its line)."""
    for item in planned:
        fsutil.atomic_write_text(item.run_dir / rundir.CONFIG, dump(item.cfg))
    write_scripts(sweep_dir, arrays)
