"""`launch`: render a run's sbatch script and submit it, print it, or run the job locally.

    launch [train] [--config FILE] [section.key=value ...] [--nodes N] [--gpus N] ... [--dry-run]
    launch eval|predict|gpucheck|convert|runs|cancel|resume ...   (launcher/commands.py)

Layers, later wins: config defaults, the YAML file, dotted overrides, explicit flags.
Before anything is created or submitted, launcher/preflight.py checks the data, the request
against the cluster and the free space of the run root (--no-preflight skips it).
LAUNCH_RUN_ROOT, when set, is the default of --run-root.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import os
import shlex
import shutil
import sys
from pathlib import Path

from core import fsutil, locks, provenance, rundir
from core.config import Config, ConfigError, config_stem, dump, load_config
from core.errors import EXIT_CODE, UserError, one_line
from launcher import commands, container, options, preflight, resume, sweep, sweep_resume
from launcher.options import DEFAULT_CONFIG, FLAGS
from launcher.render import describe_request, render_sbatch, world_size
from launcher.submit import SubmitError, Target, run_local, submit_slurm

_one_line = one_line

EPILOG = """\
example:
  launch --config configs/demo.yaml --nodes 2 train.epochs=3 --dry-run

other commands (each with --help):
  launch config              the resolved config, each value with where it came from
  launch eval RUN            accuracy of a run's checkpoint, as a SLURM job
  launch predict RUN ...     classes of a folder of images, as a SLURM job
  launch gpucheck            does TensorFlow see the GPUs of an allocation?
  launch convert SRC OUT     class folders to TFRecord shards, here or as a SLURM job
  launch runs                how every run stands
  launch cancel RUN          cancel a run's jobs
  launch resume RUN          continue a stopped run (same as --resume RUN)

A mistake in the command line, the config or the request is one line on stderr and exit code 2;
nothing is submitted or written then. sbatch's -N, -p, -t, -A, -q and -J work as in sbatch; its
other options (--mem, --gres, ...) are answered with launch's way of saying them.
"""


def _fail(message: str, code: int = EXIT_CODE) -> int:
    print(f"launch: error: {_one_line(message)}", file=sys.stderr)
    return code


def _parser() -> argparse.ArgumentParser:
    p = options.LaunchParser(prog="launch", description="Train Keras image and text classifiers on SLURM (or locally).",
                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_run_flags(p)
    p.add_argument("--version", action=options.PrintVersion)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--dry-run", action="store_true",
                      help="print the sbatch script and exit; creates nothing")
    what.add_argument("--emit-sbatch", metavar="FILE",
                      help="create the run directory and write the script to FILE; submit nothing")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue an earlier run in its own directory, from its config.yaml")
    p.add_argument("--no-preflight", action="store_true",
                   help="skip the checks of data, cluster fit and free space (launcher/preflight.py)")
    p.add_argument("--sweep", action="append", metavar="KEY=V1,V2",
                   help="sweep a key over values (repeatable: the grid product) as one job array; "
                        "launcher/sweep.py")
    p.add_argument("--max-parallel", type=options.at_least_one, metavar="N",
                   help="sweep tasks running at once (--array=...%%N); without it, no limit")
    return p


def _render(cfg: Config, run_dir: Path) -> str:
    return render_sbatch(cfg.slurm, cfg.runtime.backend, run_dir, cfg.runtime.python,
                         cfg.runtime.worker_timeout_s, container=container.for_run(cfg, run_dir))


def _write_run_files(run_dir: Path, cfg: Config, script: str) -> None:
    fsutil.atomic_write_text(run_dir / rundir.CONFIG, dump(cfg))
    fsutil.atomic_write_text(run_dir / rundir.SBATCH, script)


def _load(args: argparse.Namespace, notes: list[str]) -> tuple[Config, Path | None, str]:
    """Returns (config, run dir to reuse or None, run name); what was chosen for the user goes to
    `notes`, printed once the launch passes its checks (a refused launch prints only its error).

    A resume's overrides are checked against the run's checkpoint here (launcher/resume.py),
    before anything is written or submitted."""
    flags = {key: getattr(args, dest) for dest, key in FLAGS.items()}
    if args.resume:
        if args.config:
            raise ConfigError("--resume continues a run with its own config.yaml; drop --config "
                              "and change values with flags or section.key=value")
        run_dir = (resume.from_mirror(args.resume, args.run_root) if args.resume.startswith("s3://")
                   else Path(args.resume).expanduser().resolve())
        if not rundir.is_run_dir(run_dir):
            raise ConfigError(f"--resume {args.resume}: not a run directory (no {rundir.CONFIG}); "
                              "pass a folder that launch created under the run root")
        cfg = load_config(run_dir / rundir.CONFIG, args.overrides, flags, notes)
        resume.check_changes(load_config(run_dir / rundir.CONFIG), cfg, run_dir)
        return cfg, run_dir, run_dir.name
    path = args.config or DEFAULT_CONFIG  # a file, or an s3:// URL (core/storage.py)
    cfg = load_config(path, args.overrides, flags, notes)
    name = cfg.runtime.run_name or config_stem(path)
    if "/" in name or name in (".", ".."):
        raise ConfigError(f"runtime.run_name {name!r}: a run name is one folder name, without '/'")
    return cfg, None, name


def _launch(args: argparse.Namespace) -> int:
    notes: list[str] = []
    cfg, reused, name = _load(args, notes)
    target = Target.choose(cfg.runtime.cluster, dry_run=args.dry_run, emit=args.emit_sbatch)
    run_dir = reused or rundir.planned_run_dir(cfg.runtime.run_root, name)
    script = _render(options.for_job(copy.deepcopy(cfg), run_dir, Path.cwd()), run_dir)  # validation by rendering, before any write
    warnings = [] if args.no_preflight else preflight.run(cfg, to_slurm=target.for_slurm, dry_run=args.dry_run)
    for note in notes:
        print(f"launch: note: {_one_line(note)}", file=sys.stderr)
    for warning in warnings:
        print(f"launch: warning: {_one_line(warning)}", file=sys.stderr)
    if args.dry_run:
        sys.stdout.write(script)
        if note := target.dry_run_note("this would run locally"):
            print(f"launch: note: {note}", file=sys.stderr)
        return 0
    if reused is not None:
        with locks.launch_lock(reused):  # two resumes at once: the second sees the first's job
            locks.check_idle(reused)
            return _resume(cfg, reused, target)
    root = Path(cfg.runtime.run_root).expanduser().resolve()
    before = set(os.listdir(root)) if root.is_dir() else set()
    try:
        run_dir = rundir.new_run_dir(cfg.runtime.run_root, name)
        cfg = options.for_job(copy.deepcopy(cfg), run_dir, Path.cwd())
        script = _render(cfg, run_dir)
        _write_run_files(run_dir, cfg, script)
        provenance.write_part(run_dir, "launch", provenance.launch_record(args.config or DEFAULT_CONFIG))
    except OSError as err:  # e.g. the disk filled up: say where, and leave no empty run dir behind
        # new_run_dir may fail after its mkdir, before it returns the folder: find what it made.
        made = set(os.listdir(root)) - before if root.is_dir() else set()
        for leftover in made:
            if leftover.startswith(f"{name}-"):
                shutil.rmtree(root / leftover, ignore_errors=True)
        inside = err.filename is None or str(err.filename).startswith(f"{run_dir}{os.sep}")
        where = f"the run directory {run_dir}" if inside else err.filename  # not a temp file's name
        raise UserError(f"cannot write {where}: {err.strerror or err}; free space there or pass "
                        "--run-root elsewhere") from None
    if target.emit:
        return _emit(target.emit, script, run_dir, lambda: shutil.rmtree(run_dir, ignore_errors=True))
    if target.runs_here:
        return _run_here(cfg, run_dir, target.why)
    job_id = submit_slurm(script, run_dir, describe_request(cfg.slurm, cfg.runtime.backend), fresh=True)
    with contextlib.suppress(OSError):  # submitit's copy of the script records the id as well
        rundir.record_job(run_dir, job_id)
    _print_submitted(job_id, cfg, run_dir)
    if warning := preflight.job_warning(job_id):  # also after --no-preflight: it only warns
        print(f"launch: warning: {_one_line(warning)}", file=sys.stderr)
    return 0


def _emit(target: Path, script: str, run_dir: Path, undo) -> int:
    """--emit-sbatch: the script at `target` (and in the run directory) for a hand-run sbatch.
    Where `target` cannot be written, `undo()` takes back what this launch wrote first."""
    try:
        fsutil.atomic_write_text(target, script)
    except OSError as err:  # e.g. a full disk: one line, and no run directory left half made
        undo()
        raise UserError(f"cannot write --emit-sbatch {target}: {err.strerror or err}; free space there "
                        "or pass another file") from None
    print(f"run dir: {run_dir}")
    print(f"wrote {target} (also {run_dir / rundir.SBATCH}); submit it with:")
    print(f"  sbatch {shlex.quote(str(target))}")
    return 0


def _run_here(cfg: Config, run_dir: Path, why: str) -> int:
    """Runs the job's ranks on this machine (no SLURM) and waits for them."""
    n = world_size(cfg.slurm, cfg.runtime.backend)
    print(f"launch: running locally ({why}): {n} process{'es' if n > 1 else ''} of backend "
          f"{cfg.runtime.backend}; run dir {run_dir}", flush=True)
    return run_local(run_dir, cfg.runtime.python, n, cfg.runtime.worker_timeout_s, cfg.runtime.port)


def _resume(cfg: Config, run_dir: Path, target: Target) -> int:
    """Continues `run_dir`; its config.yaml and job.sbatch change only once the job is accepted.

    The job is submitted to start later (resume.held), its id recorded, the files written, and
    only then released, so a refused or failed resume leaves config.yaml as it was and the job
    never reads an old one.
    """
    cfg = options.for_job(copy.deepcopy(cfg), run_dir, Path.cwd())
    script = _render(cfg, run_dir)
    earlier = {p: p.read_text() for p in (run_dir / rundir.CONFIG, run_dir / rundir.SBATCH) if p.is_file()}
    if not target.submits:
        _write_run_files(run_dir, cfg, script)

        def restore() -> None:
            for path, text in earlier.items():
                fsutil.atomic_write_text(path, text)

        if target.emit:
            return _emit(target.emit, script, run_dir, restore)
        try:  # rank 0 takes the run's writer lock as it starts
            return _run_here(cfg, run_dir, target.why)
        except SubmitError:
            restore()
            raise
    job_id = submit_slurm(resume.held(script, run_dir), run_dir, describe_request(cfg.slurm, cfg.runtime.backend),
                          fresh=False)
    try:
        rundir.record_job(run_dir, job_id)
        _write_run_files(run_dir, cfg, script)
    except OSError as err:
        resume.cancel(job_id)
        for path, text in earlier.items():
            with contextlib.suppress(OSError):
                fsutil.atomic_write_text(path, text)
        raise UserError(f"cannot write {err.filename or run_dir}: {err.strerror or err}; cancelled job "
                        f"{job_id}, the run is as it was; free space there and resume again") from None
    resume.release(job_id, run_dir)
    _print_submitted(job_id, cfg, run_dir)
    if warning := preflight.job_warning(job_id):
        print(f"launch: warning: {_one_line(warning)}", file=sys.stderr)
    return 0


def _print_submitted(job_id: str, cfg: Config, run_dir: Path) -> None:
    s = cfg.slurm
    gpus = f"{s.gpus_per_node} {s.gpu_type + ' ' if s.gpu_type else ''}GPU(s) per node" if s.gpus_per_node else "no GPUs"
    out = run_dir / rundir.LOGS / f"slurm-{job_id}.out"
    print(f"submitted job {job_id}: {cfg.runtime.backend} on {s.nodes} node(s), {gpus}")
    print(f"run dir:     {run_dir}")
    print(f"logs:        {out} (and .err)")
    print(f"follow:      tail -f {shlex.quote(str(out))}; squeue -j {job_id}")
    print(f"tensorboard: tensorboard --logdir {shlex.quote(str(run_dir.parent))}")


def train(argv: list[str]) -> int:
    """`launch [train] ...`: a new run, or `--resume RUN`; raises UserError for the user's mistakes."""
    args = _parser().parse_intermixed_args(argv)
    args.config = options.given_config(args.config)  # configs/demo.yaml: the packaged one when not here
    if sweep.wanted(args, DEFAULT_CONFIG):  # a sweep: job arrays (launcher/sweep.py)
        flags = {key: getattr(args, dest) for dest, key in FLAGS.items()}
        if args.resume:
            return sweep_resume.resume_sweep(args, flags)
        return sweep.launch(args, flags, DEFAULT_CONFIG)
    return _launch(args)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `launch` console script; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return commands.dispatch(argv, train)
    except SystemExit as done:  # --help
        return done.code if isinstance(done.code, int) else EXIT_CODE
    except UserError as err:
        return _fail(str(err))
    except BrokenPipeError:  # `launch --dry-run | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13  # as if killed by SIGPIPE, like other command-line tools
    except OSError as err:
        if err.filename:
            return _fail(f"{err.filename}: {err.strerror}; check the path and its permissions")
        raise


if __name__ == "__main__":
    sys.exit(main())
