"""Runs every benchmark and prints one summary line per figure: `python -m bench`.

    python -m bench [--out bench/results/latest.json] [--only input_pipeline,converter]
                    [--images 2000] [--pngs 200] [--work-dir DIR]

Each benchmark runs in its own Python process (TensorFlow settings such as the mixed-precision
policy or XLA stay with the benchmark that set them), reading the images and shards generated
once into the work folder. Progress goes to stderr; stdout gets the summary lines at the end.
All numbers, every round included, go to --out as JSON, written atomically. The exit status
is 1 only when a benchmark could not run; a missed goal is a finding, not a failure.
"""
from __future__ import annotations

import argparse
import datetime
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Figure, log, machine, read_figures
from core.fsutil import atomic_write_text

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = ("launcher_latency", "input_pipeline", "converter", "trainer_overhead", "gpu_resnet50")
DEFAULT_OUT = REPO / "bench" / "results" / "latest.json"
LAUNCH_GOAL_S = 0.5
# The one line bench/launcher_latency.py prints (its own format; parsed here, not changed).
LAUNCH_LINE = re.compile(
    r"launch --dry-run: best (?P<launch_best>[\d.]+) s, median (?P<launch_median>[\d.]+) s; "
    r"python -c pass: best (?P<pass_best>[\d.]+) s, median (?P<pass_median>[\d.]+) s; "
    r"overhead (?P<overhead>-?[\d.]+) s median.*TensorFlow imported: (?P<heavy>.*)$", re.MULTILINE)
PREFLIGHT_LINE = re.compile(r"preflight: median (?P<with>[\d.]+) s with, (?P<without>[\d.]+) s without")


def launcher_latency(runs: int) -> list[Figure]:
    """Runs bench/launcher_latency.py (another engineer's script) and turns its line into a figure."""
    name = "launcher.dry_run_vs_python"
    goal = f"difference < {LAUNCH_GOAL_S} s"
    script = REPO / "bench" / "launcher_latency.py"
    done = subprocess.run([sys.executable, str(script), "--runs", str(runs)], cwd=REPO,
                          capture_output=True, text=True)
    line = done.stdout.strip()
    found = LAUNCH_LINE.search(line)
    if not found:
        why = f"launcher_latency.py exited {done.returncode} without its result line: {done.stderr.strip()[-300:]}"
        return [Figure(name, None, None, "s", goal, None, why)]
    n = {k: float(v) for k, v in found.groupdict().items() if k != "heavy"}
    heavy = found["heavy"].strip()
    passed = n["overhead"] < LAUNCH_GOAL_S and heavy == "no"
    figures = [Figure(name, n["launch_median"], n["pass_median"], "s", goal, passed,
                      "median wall time of launch --dry-run vs python -c pass; TensorFlow imported: " + heavy,
                      {**n, "tensorflow_imported": heavy, "runs": runs, "line": line})]
    if pre := PREFLIGHT_LINE.search(line):
        figures.append(Figure("launcher.preflight_cost", float(pre["with"]), float(pre["without"]), "s",
                              "", None, "launch --dry-run of the demo config with preflight vs --no-preflight",
                              {"runs": runs}))
    return figures


def run_module(module: str, args: list[str], scratch: Path) -> tuple[list[Figure], dict]:
    """Runs `python -m bench.MODULE ARGS --json FILE`; its output is progress, sent to stderr."""
    out = scratch / f"{module}.json"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", f"bench.{module}", *args, "--json", str(out)],
                          cwd=REPO, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    # TensorFlow's start-up chatter is noise here; everything else is shown.
    for text in done.stderr.splitlines():
        if not re.search(r"cuda|absl::InitializeLog|cuInit|oneDNN custom operations", text):
            print(text, file=sys.stderr, flush=True)
    info = {"seconds": round(seconds, 1), "returncode": done.returncode}
    if done.returncode or not out.is_file():
        why = f"bench.{module} failed (exit {done.returncode}): {done.stderr.strip()[-300:]}"
        info["error"] = why
        return [Figure(f"{module}.run", None, None, "", "", None, why)], info
    return read_figures(out), info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON with every number "
                        "(default bench/results/latest.json)")
    parser.add_argument("--only", default=",".join(BENCHMARKS),
                        help=f"comma-separated subset of {', '.join(BENCHMARKS)}")
    parser.add_argument("--images", type=int, default=2000, help="JPEGs generated (default 2000)")
    parser.add_argument("--pngs", type=int, default=200, help="PNGs added for the converter (default 200)")
    parser.add_argument("--launcher-runs", type=int, default=10, help="launch/python pairs (default 10)")
    parser.add_argument("--work-dir", type=Path, help="keep the generated images and shards here "
                        "(reused when made with the same sizes); default: a temporary folder")
    args = parser.parse_args(argv)
    chosen = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")

    started = time.perf_counter()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-"))
    scratch = Path(tempfile.mkdtemp(prefix="bench-json-"))
    figures: list[Figure] = []
    runs: dict[str, dict] = {}
    try:
        if "launcher_latency" in chosen:  # first, while no other benchmark loads the machine
            begin = time.perf_counter()
            figures += launcher_latency(args.launcher_runs)
            runs["launcher_latency"] = {"seconds": round(time.perf_counter() - begin, 1)}
        if any(b != "launcher_latency" for b in chosen):
            from bench.data import prepare

            begin = time.perf_counter()
            prepare(work, images=args.images, pngs=args.pngs)
            runs["prepare_data"] = {"seconds": round(time.perf_counter() - begin, 1)}
        data = ["--work-dir", str(work), "--images", str(args.images)]
        module_args = {"input_pipeline": data, "converter": [*data, "--pngs", str(args.pngs)],
                       "trainer_overhead": [], "gpu_resnet50": data}
        for module in chosen:
            if module == "launcher_latency":
                continue
            log(f"running {module}")
            found, runs[module] = run_module(module, module_args[module], scratch)
            figures += found
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)

    elapsed = time.perf_counter() - started
    result = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "elapsed_s": round(elapsed, 1), "machine": machine(), "runs": runs,
              "settings": {"images": args.images, "pngs": args.pngs, "launcher_runs": args.launcher_runs},
              "figures": [f.to_dict() for f in figures]}
    atomic_write_text(args.out, json.dumps(result, indent=1, default=str) + "\n")
    print(f"# python -m bench: {len(figures)} figures in {elapsed:.0f} s on {machine()['cores']} cores; "
          f"all numbers in {args.out}")
    for figure in figures:
        print(figure.line())
    return 1 if any(r.get("returncode") for r in runs.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
