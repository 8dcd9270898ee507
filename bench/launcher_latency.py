"""How long `launch --dry-run` takes on a login node, beyond starting Python at all.

    python bench/launcher_latency.py [--runs N] [--config FILE]

Prints one line: best and median wall time of `launch --dry-run` and of `python -c pass`, measured
alternately in the same run, and their difference against the goal of 0.5 s; then a second line
with the cost of preflight: the same dry run with and without `--no-preflight`, as a ratio.
Exits 1 if the dry run imported TensorFlow (checked with -X importtime), which would make a login
node slow to answer.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GOAL_S = 0.5
HEAVY = ("tensorflow", "keras", "tf_keras")


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def heavy_imports(command: list[str]) -> list[str]:
    """Top-level heavy packages the command imports, from Python's own import log."""
    log = subprocess.run([command[0], "-X", "importtime", *command[1:]], cwd=REPO, check=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True).stderr
    names = {line.rsplit("|", 1)[-1].strip() for line in log.splitlines() if line.startswith("import time:")}
    return sorted(name for name in names if name.split(".")[0] in HEAVY)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        launch = [sys.executable, "-m", "launcher.cli", "--config", args.config, "--dry-run",
                  "--run-root", str(Path(scratch) / "runs")]
        baseline = [sys.executable, "-c", "pass"]
        unchecked = [*launch, "--no-preflight"]
        timed(launch), timed(baseline), timed(unchecked)  # warm the file cache before measuring
        launch_s, baseline_s, unchecked_s = [], [], []
        for _ in range(args.runs):  # alternate, so drift in machine load hits all alike
            launch_s.append(timed(launch))
            baseline_s.append(timed(baseline))
            unchecked_s.append(timed(unchecked))
        heavy = heavy_imports(launch)
    overhead = statistics.median(launch_s) - statistics.median(baseline_s)
    verdict = "within" if overhead < GOAL_S else "OVER"
    print(f"launch --dry-run: best {min(launch_s):.3f} s, median {statistics.median(launch_s):.3f} s; "
          f"python -c pass: best {min(baseline_s):.3f} s, median {statistics.median(baseline_s):.3f} s; "
          f"overhead {overhead:.3f} s median ({verdict} the {GOAL_S} s goal, {args.runs} runs); "
          f"TensorFlow imported: {', '.join(heavy) if heavy else 'no'}")
    with_s, without_s = statistics.median(launch_s), statistics.median(unchecked_s)
    print(f"preflight: median {with_s:.3f} s with, {without_s:.3f} s without (--no-preflight); "
          f"ratio {with_s / without_s:.3f}")
    return 1 if heavy else 0


if __name__ == "__main__":
    sys.exit(main())
