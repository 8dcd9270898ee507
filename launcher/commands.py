"""The subcommands of `launch` besides training: config, eval, predict, gpucheck, convert, runs, cancel,
resume.

Each job they start goes through launcher/jobs.py: the same renderer, template family, site
options and submit function as a training run. Nothing here imports TensorFlow.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from core import rundir
from core.config import Config, load_config, resolve
from core.errors import UsageError, UserError, did_you_mean
from core.gpucheck import allocation_verdict, parse_verdict
from core.rundir import RunDir
from launcher import config_view, options, preflight, runs, sweep_compare
from launcher.cancel import cancel_run
from launcher.jobs import Request, log_lines, start, task_slurm
from launcher.options import DEFAULT_CONFIG, FLAGS, REPO, SITE_FLAGS
from launcher.render import TaskJob
from launcher.resume import absolute_paths
from launcher.submit import Target

EVAL_TIME_MIN = 60  # eval and predict ask for at most this, unless --time says otherwise
GPUCHECK_TIME_MIN = 10


class Parser(options.LaunchParser):
    """launch's parser (one-line errors, sbatch's spellings answered) with the epilog's example
    kept as written."""

    def __init__(self, prog: str, description: str, example: str):
        super().__init__(prog=prog, description=description, epilog=f"example:\n{example}",
                         formatter_class=argparse.RawDescriptionHelpFormatter)


def _site_options(p: argparse.ArgumentParser, *, run_config: bool) -> None:
    p.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="config overrides, e.g. slurm.mem=16G")
    if not run_config:
        p.add_argument("--config", help=f"YAML config whose slurm section applies (default: "
                                        f"{DEFAULT_CONFIG.relative_to(REPO)})")
    options.add_site_flags(p, job_name_help="default: the command's name",
                           cluster_help="auto | slurm | local: local runs it here and waits")
    p.add_argument("--dry-run", action="store_true", help="print the sbatch script and exit")


def _flags(args: argparse.Namespace) -> dict[str, object]:
    flags = {key: getattr(args, dest) for dest, key in SITE_FLAGS.items()}
    if getattr(args, "gpus", None) is not None:  # gpucheck: --gpu-type is checked against it
        flags["slurm.gpus_per_node"] = args.gpus
    return flags


def _run(text: str) -> RunDir:
    run = RunDir(Path(text).expanduser().resolve())
    if not run.exists():
        raise UserError(f"{text}: not a run directory (no {run.config.name}); pass a folder that "
                        "launch created under the run root (launch runs lists them)")
    return run


def _run_config(run: RunDir, args: argparse.Namespace) -> Config:
    cfg = load_config(run.config, args.overrides, _flags(args))
    absolute_paths(cfg, Path.cwd())  # an override's ./path (container.image=./img.sqsh) as the user meant
    return cfg


def _site_config(args: argparse.Namespace) -> Config:
    cfg = load_config(options.given_config(args.config) or DEFAULT_CONFIG, args.overrides, _flags(args))
    absolute_paths(cfg, Path.cwd())
    return cfg


def _python(cfg: Config) -> str:
    return cfg.runtime.python or sys.executable


def _log_root(args: argparse.Namespace, cfg: Config) -> Path:
    """Logs of a job with no run: RUN_ROOT/logs (launch runs ignores the folder: no config.yaml)."""
    root = args.run_root or cfg.runtime.run_root
    return Path(root).expanduser().resolve() / "logs"


def _common_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="the run directory")
    p.add_argument("--checkpoint", default="best", help="best | final | latest | path to an .h5 model")
    p.add_argument("--batch-size", type=int, default=0, help="0 = the run's per-replica batch")
    p.add_argument("--wait", action="store_true", help="wait for the job to end and print its output")
    _site_options(p, run_config=True)


def _finish(outcome, wait: bool) -> int:
    """With --wait: the job's output, and how it ended when that was not COMPLETED."""
    if wait and outcome.log is not None:
        for line in log_lines(outcome.log):
            print(line)
        if outcome.code:
            print(f"launch: job {outcome.job_id} ended {outcome.state}; see "
                  f"{outcome.log.with_suffix('.err')}", file=sys.stderr)
    return outcome.code


def cmd_eval(argv: list[str]) -> int:
    p = Parser("launch eval", "Accuracy, top-5 and loss of a run's checkpoint on a split, as a job "
               "with one GPU (when the run had GPUs); writes RUN/report/eval-<split>.json.",
               "  launch eval runs/demo-20261122-101500 --checkpoint final --split val")
    _common_eval(p)
    p.add_argument("--split", default="val", choices=("val", "train"))
    p.add_argument("--max-batches", type=int, default=None, help="stop after N batches")
    args = p.parse_intermixed_args(argv)
    run = _run(args.run)
    cfg = _run_config(run, args)
    checkpoint = _checkpoint(run, args.checkpoint)
    command = [_python(cfg), "-u", "-m", "training.evaluate", "eval", "--run-dir", str(run.path),
               "--checkpoint", checkpoint, "--split", args.split, "--batch-size", str(args.batch_size)]
    if args.max_batches is not None:
        command += ["--max-batches", str(args.max_batches)]
    job = TaskJob("eval", tuple(command), run.logs, run_dir=run.path, folders=tuple(_checkpoint_folder(checkpoint)))
    request = Request(gpus_per_node=1 if cfg.slurm.gpus_per_node else 0,
                      time_min=args.time or min(cfg.slurm.time_min, EVAL_TIME_MIN))
    return _finish(start(cfg, job, request, dry_run=args.dry_run, wait=args.wait), args.wait)


def _checkpoint(run: RunDir, name: str) -> str:
    """The --checkpoint argument for the job; checked here (dry runs too), so that a missing
    checkpoint is one line now rather than a failed job later."""
    path = run.checkpoint(name)
    return name if name in RunDir.NAMED_CHECKPOINTS else str(path.resolve())


def _checkpoint_folder(checkpoint: str) -> list[tuple[str, str]]:
    """A --checkpoint PATH's folder, mounted in a container; a named checkpoint is in the run."""
    return [] if checkpoint in RunDir.NAMED_CHECKPOINTS else [(str(Path(checkpoint).parent), "--checkpoint's folder")]


def cmd_predict(argv: list[str]) -> int:
    p = Parser("launch predict", "Classes of every image under a folder (image runs), or of texts "
               "given on the command line or in a file (text runs), as a CSV row each (item, class, "
               "confidence, ...), computed in a job.",
               "  launch predict runs/demo-20261122-101500 --images photos/ --out preds.csv --top-k 3\n"
               "  launch predict runs/sentiment_demo-20261125-101500 --text \"a tedious, overlong mess\" --wait")
    _common_eval(p)
    p.add_argument("--images", help="image runs: folder searched recursively for jpg/png")
    p.add_argument("--text", action="append", default=[], help="text runs: a text to label; repeat for several")
    p.add_argument("--file", help="text runs: a text file (one text a line) or a CSV with a text column")
    p.add_argument("--out", help="CSV to write (on storage the nodes share); text runs without it: "
                   "the job's log (printed with --wait)")
    p.add_argument("--top-k", type=int, default=5)
    args = p.parse_intermixed_args(argv)
    run = _run(args.run)
    cfg = _run_config(run, args)
    out = Path(args.out).expanduser().resolve() if args.out else None
    if out is not None and not out.parent.is_dir():
        raise UserError(f"--out {args.out}: folder {out.parent} does not exist; create it first")
    if cfg.task == "text":
        command = _predict_texts(run, args, out)
    else:
        command = _predict_images(run, args, out)
    checkpoint = _checkpoint(run, args.checkpoint)
    command = [_python(cfg), "-u", *command, "--run-dir", str(run.path), "--checkpoint", checkpoint]
    folders = _checkpoint_folder(checkpoint)  # what the job reads and writes, mounted in a container
    if args.images:
        folders.append((str(Path(args.images).expanduser().resolve()), "--images"))
    if args.file:
        folders.append((str(Path(args.file).expanduser().resolve().parent), "--file's folder"))
    if out:
        folders.append((str(out.parent), "--out's folder"))
    job = TaskJob("predict", tuple(command), run.logs, run_dir=run.path, folders=tuple(folders))
    request = Request(gpus_per_node=1 if cfg.slurm.gpus_per_node else 0,
                      time_min=args.time or min(cfg.slurm.time_min, EVAL_TIME_MIN))
    return _finish(start(cfg, job, request, dry_run=args.dry_run, wait=args.wait), args.wait)


def _predict_images(run: RunDir, args: argparse.Namespace, out: Path | None) -> list[str]:
    if args.text or args.file or not args.images:
        raise UserError(f"{run.path} is an image run: pass --images FOLDER (--text and --file are for text runs)")
    images = Path(args.images).expanduser().resolve()
    if not images.is_dir():
        raise UserError(f"--images {args.images} is not a folder; pass the folder holding the images")
    if out is None:
        raise UserError("--out FILE is missing: image predictions go to a CSV on storage the nodes share")
    return ["-m", "training.evaluate", "predict", "--images", str(images), "--out", str(out),
            "--top-k", str(args.top_k), "--batch-size", str(args.batch_size or 32)]


def _predict_texts(run: RunDir, args: argparse.Namespace, out: Path | None) -> list[str]:
    if args.images or not (args.text or args.file):
        raise UserError(f"{run.path} is a text run: pass --text \"...\" (repeatable) or --file FILE "
                        "(--images is for image runs)")
    command = ["-m", "training.predict_text"]
    for text in args.text:
        command += ["--text", text]
    if args.file:
        source = Path(args.file).expanduser().resolve()
        if not source.is_file():
            raise UserError(f"--file {args.file} does not exist; pass a text file (one text a line) or a CSV")
        command += ["--file", str(source)]
    return command + (["--out", str(out)] if out else [])


def cmd_gpucheck(argv: list[str]) -> int:
    p = Parser("launch gpucheck", "Does TensorFlow see the GPUs SLURM allocates? Runs `python -m "
               "training.gpucheck` on every node of a new allocation, waits, prints each node's line "
               "and one verdict; exit 1 unless every node says OK.",
               "  launch gpucheck --nodes 2 --gpus 2 --gpu-type a100 --partition gpu")
    p.add_argument("-N", "--nodes", type=int, default=None, help="default: the config's slurm.nodes")
    p.add_argument("--gpus", "--gpus-per-node", dest="gpus", type=int, default=None,
                   help="GPUs per node (default: the config's slurm.gpus_per_node)")
    p.add_argument("--run-dir", default=None, help="take the request from this run; logs go there")
    p.add_argument("--run-root", default=rundir.run_root_from_env(),
                   help="without --run-dir, logs go to RUN_ROOT/logs")
    p.add_argument("--no-preflight", action="store_true",
                   help="skip the check of the request against the partition (as launch --no-preflight)")
    _site_options(p, run_config=False)
    args = p.parse_intermixed_args(argv)
    if args.run_dir and args.config:
        raise UsageError("--run-dir takes the run's own config.yaml; drop --config")
    run = _run(args.run_dir) if args.run_dir else None
    cfg = _run_config(run, args) if run else _site_config(args)
    nodes = cfg.slurm.nodes if args.nodes is None else args.nodes
    gpus = cfg.slurm.gpus_per_node if args.gpus is None else args.gpus
    if nodes < 1 or gpus < 0:
        raise UsageError(f"--nodes {nodes} --gpus {gpus}: ask for at least one node and zero or more GPUs")
    command = [_python(cfg), "-m", "training.gpucheck"]
    command += ["--run-dir", str(run.path)] if run else []
    command += ["--expect-gpus", "0"] if gpus == 0 else []  # SLURM then sets no GPU variables
    job = TaskJob("gpucheck", tuple(command), run.logs if run else _log_root(args, cfg), every_node=True,
                  run_dir=run.path if run else None)
    request = Request(nodes=nodes, gpus_per_node=gpus, cpus_per_task=1,
                      time_min=args.time or GPUCHECK_TIME_MIN)
    on_slurm = Target.choose(cfg.runtime.cluster, dry_run=args.dry_run).on_slurm
    if on_slurm and not args.no_preflight:  # as launch --nodes N
        for note in preflight.check_cluster(task_slurm(cfg, job, request), "multiworker"):  # one task a node
            print(f"launch: warning: {note}", file=sys.stderr)
    outcome = start(cfg, job, request, dry_run=args.dry_run, wait=True)
    if outcome.job_id is None:  # a dry run, or the check ran here and printed its own line
        return outcome.code
    lines = sorted(line for line in log_lines(outcome.log) if parse_verdict(line))
    for line in lines:
        print(line)
    text, ok = allocation_verdict(lines, nodes)
    if not ok:  # the job's own one-line errors say why a node did not report (an image that cannot run)
        for line in log_lines(outcome.log.with_suffix(".err")):
            if line.startswith("launch: error: "):
                print(line, file=sys.stderr)
    print(f"gpucheck job {outcome.job_id} on {nodes} node(s), {gpus} GPU(s) each: {text} "
          f"(log: {outcome.log})")
    return 0 if ok else 1


def cmd_convert(argv: list[str]) -> int:
    p = Parser("launch convert", "Convert SRC/{train,val,test}/<class>/<image> into TFRecord shards "
               "and labels.json in OUT, as a one-node CPU job, or as one job array of K tasks that "
               "each write their slice of the shards (or here with --cluster local).",
               "  launch convert photos/ shards/ --max-side 512 --cluster local\n"
               "  launch convert photos/ shards/ --shards 128 --array-tasks 8")
    p.add_argument("src", metavar="SRC", help="folder holding train/ and optionally val/ and test/")
    p.add_argument("out", metavar="OUT", help="new or empty output folder on shared storage")
    for flag in ("--shards-train", "--shards-val", "--shards-test", "--readers", "--workers", "--max-side",
                 "--min-side", "--jpeg-quality"):
        p.add_argument(flag, type=int, default=None, metavar="N",
                       help="as for python -m training.data.convert")
    p.add_argument("--shards", dest="shards_train", type=int, default=None, metavar="N",
                   help="training shards (the same as --shards-train)")
    p.add_argument("--array-tasks", type=int, default=None, metavar="K",
                   help="one job array of K tasks, each writing its contiguous slice of the shards; the "
                        "last task to finish writes labels.json")
    p.add_argument("--cpus", type=int, default=None, help="CPUs of the job (default: slurm.cpus_per_task)")
    p.add_argument("--wait", action="store_true", help="wait for the job to end and print its output")
    p.add_argument("--run-root", default=rundir.run_root_from_env(),
                   help="the job's log goes to RUN_ROOT/logs")
    _site_options(p, run_config=False)
    args = p.parse_intermixed_args(argv)
    src, out = Path(args.src).expanduser().resolve(), Path(args.out).expanduser().resolve()
    if not src.is_dir():
        raise UserError(f"SRC {args.src} is not a folder; pass the folder holding train/ (and val/)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"OUT {args.out} exists and is not an empty folder; pass a new folder")
    if args.array_tasks is not None and args.array_tasks < 1:
        raise UsageError(f"--array-tasks {args.array_tasks}: ask for at least one task")
    cfg = _site_config(args)
    command = [_python(cfg), "-u", "-m", "training.data.convert", str(src), str(out)]
    array = ""
    if args.array_tasks is not None:
        if Target.choose(cfg.runtime.cluster, dry_run=args.dry_run).on_slurm:
            array = f"0-{args.array_tasks - 1}"
            command += ["--array-tasks", str(args.array_tasks)]  # each task: $SLURM_ARRAY_TASK_ID
        else:
            print("launch: note: --array-tasks needs SLURM; converting in one process here, which "
                  "writes the same shards", file=sys.stderr)
    for dest in ("shards_train", "shards_val", "shards_test", "readers", "workers", "max_side", "min_side",
                 "jpeg_quality"):
        if getattr(args, dest) is not None:
            command += [f"--{dest.replace('_', '-')}", str(getattr(args, dest))]
    # In a container OUT is mounted, or its folder while OUT does not exist yet (the job creates it).
    written = (str(out), "OUT") if out.is_dir() else (str(out.parent), "OUT's folder")
    job = TaskJob("convert", tuple(command), _log_root(args, cfg), array, folders=((str(src), "SRC"), written))
    request = Request(cpus_per_task=args.cpus, time_min=args.time)
    return _finish(start(cfg, job, request, dry_run=args.dry_run, wait=args.wait), args.wait)


def cmd_config(argv: list[str]) -> int:
    p = Parser("launch config", "Print the config that `launch` with the same arguments would run, "
               "as YAML, each value followed by where it came from: default, the config file, an "
               "override, a flag, or set by launch from other keys. Checks it as launch does; "
               "submits and writes nothing.",
               "  launch config --config configs/demo.yaml data.batch_size=128 --nodes 2")
    options.add_run_flags(p)
    args = p.parse_intermixed_args(argv)
    flags = {key: getattr(args, dest) for dest, key in FLAGS.items()}
    cfg, given = resolve(args.config or DEFAULT_CONFIG, args.overrides, flags)
    sys.stdout.write(config_view.describe(cfg, given, Path.cwd()))
    return 0


def cmd_runs(argv: list[str]) -> int:
    args = runs.parser().parse_args(argv)
    if args.sweep:
        return sweep_compare.main(args.sweep, args.metric)
    return runs.show(args)


def cmd_cancel(argv: list[str]) -> int:
    p = Parser("launch cancel", "Cancel every queued or running job of a run (scancel), wait until "
               "SLURM shows them ended, and make status.json say how the run stands.",
               "  launch cancel runs/demo-20261122-101500")
    p.add_argument("run", metavar="RUN", help="the run directory")
    args = p.parse_args(argv)

    return cancel_run(_run(args.run))


def dispatch(argv: list[str], train: Callable[[list[str]], int]) -> int:
    """Runs the subcommand named by argv[0]; anything else is `launch train` (the default)."""
    head, rest = (argv[0], argv[1:]) if argv else ("", [])
    if head == "resume":
        if rest[:1] in (["-h"], ["--help"]):
            print(RESUME_HELP)
            return 0
        if not rest or rest[0].startswith("-"):
            raise UsageError("launch resume RUN [section.key=value ...] [flags]: name the run "
                             "directory first, e.g. launch resume runs/demo-20261122-101500 train.epochs=30")
        return train(["--resume", *rest])
    if head == "train":
        return train(rest)
    if head in COMMANDS:
        return COMMANDS[head](rest)
    if head and not head.startswith("-") and not set(head) & set("=./"):
        # Not a flag, an override or a file: a command, misspelt.
        names = ["train", "resume", *COMMANDS]
        hint = did_you_mean(head, names) or f"; commands: {', '.join(names)}"
        raise UsageError(f"'{head}' is not a launch command{hint} (launch --help lists them)")
    return train(argv)


RESUME_HELP = """\
usage: launch resume RUN [section.key=value ...] [launch flags]

Continue a stopped run in its own directory from its latest checkpoint: the same as
`launch --resume RUN` (launch --help lists the flags). Refused while a job of the run is queued
or running; a completed run resumes only with more train.epochs.

example:
  launch resume runs/demo-20261122-101500 train.epochs=30 --time 120"""

COMMANDS = {"config": cmd_config, "eval": cmd_eval, "predict": cmd_predict, "gpucheck": cmd_gpucheck,
            "convert": cmd_convert, "runs": cmd_runs, "cancel": cmd_cancel}
