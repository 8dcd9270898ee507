"""How long a 1,000-point sweep takes to validate and render on a login node, against one run.

    python bench/sweep_scale.py [--points-per-axis 40 25] [--runs 3]

Prints one line: the median wall time of `launch --dry-run` of a 40 x 25 grid sweep (1,000
points: every point's config checked, its script rendered, preflight once per distinct data
and request, the array script printed), of the same sweep with `--emit-sbatch` (the sweep
directory and its 1,000 run directories written), and of a single-run `launch --dry-run`, with
the ratios, against the goal of 3 s for the sweep. Nothing is submitted: the local cluster is
shared, and one sbatch call costs the same for an array of 1,000 tasks as for one job.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GOAL_S = 3.0


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points-per-axis", type=int, nargs=2, default=(40, 25))
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    a, b = args.points_per_axis
    lrs = ",".join(f"{0.0001 * (i + 1):.4f}" for i in range(a))
    dropouts = ",".join(f"{0.02 * i:.2f}" for i in range(b))
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "runs"
        base = [sys.executable, "-m", "launcher.cli", "--config", str(REPO / "configs" / "demo.yaml"),
                "--run-root", str(root), "--cluster", "slurm"]
        sweep = [*base, "--sweep", f"optimizer.lr={lrs}", "--sweep", f"model.dropout={dropouts}",
                 "--max-parallel", "50"]
        single = [*base, "--dry-run"]
        timed(single)  # warm the file cache
        single_s, dry_s, emit_s = [], [], []
        for _ in range(args.runs):
            single_s.append(timed(single))
            dry_s.append(timed([*sweep, "--dry-run"]))
            emit_s.append(timed([*sweep, "--emit-sbatch", str(Path(scratch) / "array.sbatch")]))
            shutil.rmtree(root)
    dry, emit, one = (statistics.median(x) for x in (dry_s, emit_s, single_s))
    print(f"sweep of {a * b} points: --dry-run median {dry:.2f} s, --emit-sbatch (writes every run dir) "
          f"median {emit:.2f} s; single-run --dry-run median {one:.2f} s; ratios {dry / one:.1f}x and "
          f"{emit / one:.1f}x; goal < {GOAL_S} s: {'met' if emit < GOAL_S else 'missed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
