"""Converter throughput: all cores against one worker, and against copying the same bytes.

    python -m bench.converter [--images 2000] [--pngs 200] [--rounds 2]

The input is the generated JPEG tree plus PNGs (which the converter must decode and re-encode
as JPEG), 10 classes. Every conversion is the command a user runs,
`python -m training.data.convert SRC OUT --workers K`, timed from start to exit, so each
includes starting Python, the workers and TensorFlow. To tell that start-up apart from
the work, the same command also converts a tiny tree (two images per class); the "after
start-up" figure subtracts that time.
Figures: images/s with every core / with one worker (goal >= 0.8 x cores), the same after
start-up (reported), and the all-core rate against `shutil.copyfile` of every source file
into a temporary folder, the I/O ceiling (reported).
"""
from __future__ import annotations

import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import (Figure, best_rate, log, machine, ratio_figure, report, standard_parser,
                          work_dir)

TINY_PER_CLASS = 2


def run_converter(src: Path, out: Path, workers: int, shards: int, cpu: list | None = None) -> float:
    """Seconds `python -m training.data.convert` takes, start to exit; `out` is removed after.

    The CPU seconds it and its workers used are appended to `cpu` when given.
    """
    command = [sys.executable, "-m", "training.data.convert", str(src), str(out), "--workers", str(workers),
               "--shards-train", str(shards)]
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if cpu is not None:
        after = resource.getrusage(resource.RUSAGE_CHILDREN)  # workers count once the converter reaps them
        cpu.append(round(after.ru_utime + after.ru_stime - used.ru_utime - used.ru_stime, 3))
    shutil.rmtree(out, ignore_errors=True)
    if done.returncode:
        raise RuntimeError(f"converter failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return seconds


def copy_tree_files(src: Path, dest: Path) -> float:
    """Seconds to `shutil.copyfile` every file of `src` into `dest` (flat); `dest` removed after."""
    files = sorted(p for p in src.rglob("*") if p.is_file())
    dest.mkdir(parents=True)
    start = time.perf_counter()
    for i, path in enumerate(files):
        shutil.copyfile(path, dest / f"{i:06d}{path.suffix}")
    seconds = time.perf_counter() - start
    shutil.rmtree(dest, ignore_errors=True)
    return seconds


def tiny_tree(src: Path, dest: Path) -> int:
    """A few files per class of `src`, to time the converter's fixed start-up."""
    count = 0
    for class_dir in sorted((src / "train").iterdir()):
        (dest / "train" / class_dir.name).mkdir(parents=True)
        for path in sorted(class_dir.iterdir())[:TINY_PER_CLASS]:
            shutil.copyfile(path, dest / "train" / class_dir.name / path.name)
            count += 1
    return count


def measure(src: Path, scratch: Path, cores: int, rounds: int, shards: int) -> dict:
    images = sum(1 for p in (src / "train").rglob("*") if p.is_file())
    tiny = tiny_tree(src, scratch / "tiny")
    times = {"one": [], "all": [], "one_startup": [], "all_startup": [], "copy": []}
    cpu = {"one": [], "all": []}
    for r in range(rounds):
        order = [("one", 1), ("all", cores)] if r % 2 == 0 else [("all", cores), ("one", 1)]
        for name, workers in order:
            times[name].append(round(run_converter(src, scratch / "out", workers, shards, cpu[name]), 3))
            times[f"{name}_startup"].append(
                round(run_converter(scratch / "tiny", scratch / "out", workers, workers), 3))
            log(f"converter round {r + 1}/{rounds}: {workers} worker(s) {times[name][-1]:.1f} s "
                f"({images / times[name][-1]:.0f} img/s, {cpu[name][-1]:.1f} CPU s), "
                f"start-up {times[name + '_startup'][-1]:.1f} s")
        times["copy"].append(round(copy_tree_files(src / "train", scratch / "copy"), 4))
    return {"images": images, "tiny_images": tiny, "seconds": times, "cpu_seconds": cpu, "workers": cores}


def figures(measured: dict) -> list[Figure]:
    images, seconds, cores = measured["images"], measured["seconds"], measured["workers"]
    rate = {name: best_rate([images / s for s in seconds[name]]) for name in ("one", "all", "copy")}
    # After start-up: the fastest full run less the fastest tiny run of the same worker count.
    work = {name: images / max(min(seconds[name]) - min(seconds[f"{name}_startup"]), 1e-6)
            for name in ("one", "all")}
    goal = 0.8 * cores
    return [
        ratio_figure("converter.all_cores_vs_one", rate["all"], rate["one"], "img/s", goal,
                     f"python -m training.data.convert with {cores} workers vs 1, start to exit", measured),
        Figure("converter.all_cores_vs_one_after_startup", work["all"], work["one"], "img/s", "", None,
               "as above, less the time the same command takes on a tiny tree (start-up)", measured),
        ratio_figure("converter.vs_file_copy", rate["all"], rate["copy"], "img/s", None,
                     f"converter with {cores} workers vs shutil.copyfile of the same files", measured),
    ]


def main(argv=None) -> int:
    parser = standard_parser("python -m bench.converter", __doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="JPEGs to generate (default 2000)")
    parser.add_argument("--pngs", type=int, default=200, help="PNGs added to them (default 200)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    parser.add_argument("--shards", type=int, default=16, help="training shards written (default 16)")
    parser.add_argument("--workers", type=int, default=machine()["cores"],
                        help="the 'all cores' worker count (default: usable cores)")
    args = parser.parse_args(argv)

    from bench.data import prepare

    with work_dir(args.work_dir) as work:
        scratch = Path(tempfile.mkdtemp(prefix="convert-", dir=work))
        try:
            paths = prepare(work, images=args.images, pngs=args.pngs)
            measured = measure(paths["mixed_root"], scratch, args.workers, args.rounds, args.shards)
            report(figures(measured), args.json)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
