"""How long `launch runs` takes over 10,000 run directories, and how often it asks SLURM.

    python bench/runs_scale.py [--runs-dirs 10000] [--rounds 3]

Generates the run directories once (config.yaml, status.json naming a job SLURM has never
seen, a three-epoch history.csv), then times `launch runs --run-root ROOT --json` as a user
would start it, with squeue and sacct wrapped on PATH so every call is counted. Prints one line:
the median wall time against the goal of 2 s, and the calls per listing against the goal of one
squeue and at most one sacct.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GOAL_S = 2.0


def make_runs(root: Path, count: int) -> None:
    history = "epoch,loss,val_loss,val_accuracy,epoch_time_s\n" + "".join(
        f"{e},{1 / e:.3f},{1.2 / e:.3f},{0.3 * e:.2f},4.0\n" for e in (1, 2, 3))
    for i in range(count):
        run = root / f"demo-20261125-{i:06d}"
        (run / "logs").mkdir(parents=True)
        (run / "config.yaml").write_text("train:\n  epochs: 3\n")
        status = {"state": "completed", "epoch": 3, "epochs": 3, "job_id": str(9_000_000 + i),
                  "best_val_accuracy": 0.9}  # as the chief writes it
        (run / "status.json").write_text(json.dumps(status))
        (run / "history.csv").write_text(history)


def counting_path(scratch: Path, log: Path) -> str:
    """A PATH whose squeue and sacct append their name to `log`, then run the real one (if any)."""
    bin_dir = scratch / "bin"
    bin_dir.mkdir()
    for tool in ("squeue", "sacct"):
        real = shutil.which(tool)
        run_real = f'exec {real} "$@"' if real else "exit 1"
        (bin_dir / tool).write_text(f'#!/bin/sh\necho {tool} >> "{log}"\n{run_real}\n')
        (bin_dir / tool).chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dirs", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        root = scratch / "runs"
        started = time.perf_counter()
        make_runs(root, args.run_dirs)
        print(f"generated {args.run_dirs} run directories in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        log = scratch / "calls.log"
        env = {**os.environ, "PATH": counting_path(scratch, log)}
        command = [sys.executable, "-m", "launcher.cli", "runs", "--run-root", str(root), "--json"]
        times, calls = [], []
        for _ in range(args.rounds):
            log.write_text("")
            start = time.perf_counter()
            done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
            times.append(time.perf_counter() - start)
            if done.returncode:
                print(f"launch runs failed: {done.stderr.strip()[-300:]}", file=sys.stderr)
                return 1
            assert len(json.loads(done.stdout)) == args.run_dirs
            calls.append(log.read_text().split())
    median = statistics.median(times)
    per = {tool: max(c.count(tool) for c in calls) for tool in ("squeue", "sacct")}
    print(f"launch runs over {args.run_dirs} run directories: median {median:.2f} s (best {min(times):.2f} s); "
          f"{per['squeue']} squeue and {per['sacct']} sacct call(s) per listing; goal < {GOAL_S} s with one squeue "
          f"and at most one sacct: {'met' if median < GOAL_S and per['squeue'] == 1 and per['sacct'] <= 1 else 'missed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
