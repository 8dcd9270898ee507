"""A sweep larger than the cluster's MaxArraySize: several job arrays, each over its own
contiguous range of points. The limit is injected (sweep_arrays.max_array_size) so that a
handful of points shows what a cluster's real limit does to thousands."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from launcher import cli, sweep_arrays
from launcher.sweep import Planned
from launcher.sweep_points import Point

REPO = Path(__file__).resolve().parent.parent
DEMO = str(REPO / "configs" / "demo.yaml")
LRS = "optimizer.lr=0.001,0.002,0.003,0.004,0.005"


@pytest.fixture
def limit_2(monkeypatch):
    """This cluster's MaxArraySize is 2: task ids 0 and 1 only."""
    monkeypatch.setattr(sweep_arrays, "max_array_size", lambda: 2)


def planned(indices: list[int]) -> list[Planned]:
    return [Planned(Point(i, {}), Path(f"/runs/s/{i:03d}"), None) for i in indices]


def test_points_split_into_contiguous_arrays_whose_task_ids_stay_below_the_limit():
    arrays = sweep_arrays.split(planned(list(range(5))), 2)
    assert [(a.offset, a.points(), a.task_ids()) for a in arrays] == [(0, "0-1", "0-1"), (2, "2-3", "0-1"),
                                                                      (4, "4", "0")]
    assert len(sweep_arrays.split(planned(list(range(5))), None)) == 1


def test_a_resumed_point_keeps_its_array_offset_and_task_id():
    arrays = sweep_arrays.split(planned([1, 3, 4, 7]), 3)
    assert [(a.offset, a.task_ids()) for a in arrays] == [(0, "1"), (3, "0-1"), (6, "1")]
    assert sweep_arrays.split(planned([1, 3]), 1001)[0].task_ids() == "1,3"  # below the limit: as before


def test_dry_run_prints_one_script_per_array_and_says_so(limit_2, run_root, capsys, tmp_path):
    code = cli.main(["--config", DEMO, "--run-root", str(run_root), "--cluster", "slurm", "--no-preflight",
                     "--sweep", LRS, "--max-parallel", "1", "--dry-run"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert re.findall(r"^#SBATCH --array=(\S+)$", out, re.M) == ["0-1%1", "0-1%1", "0%1"]
    assert ("launch: note: this cluster's MaxArraySize is 2, so the sweep is split into 3 job arrays: "
            "points 0-1, points 2-3, points 4\n") in err
    assert not run_root.exists()
    # Task t of each array trains line offset + t + 1 of runs.txt: run the script's own lines.
    runs = tmp_path / "runs.txt"
    runs.write_text("".join(f"/sweep/point-{i}\n" for i in range(5)))
    for script, offset in zip(out.split("#!/bin/bash\n")[1:], (0, 2, 4)):
        start = script.index("mapfile")
        lines = script[start:script.index("mkdir", start)]
        lines = re.sub(r"< \S+", f"< {runs}", lines, count=1)
        for task in (0, 1) if offset < 4 else (0,):
            found = subprocess.run(["bash", "-c", lines + 'echo "$run_dir"'], capture_output=True, text=True,
                                   env={"SLURM_ARRAY_TASK_ID": str(task)}).stdout.strip()
            assert found == f"/sweep/point-{offset + task}"


@pytest.mark.slurm
def test_split_arrays_are_submitted_recorded_listed_and_resumed(limit_2, run_root, capsys, slurm_cluster):
    code = cli.main(["--config", DEMO, "--run-root", str(run_root), "--sweep", "optimizer.lr=0.001,0.002,0.003",
                     "--time", "10", "slurm.cpus_per_task=1"])
    out, err = capsys.readouterr()
    ids = re.findall(r"^submitted job array (\d+) \(--array=(\S+)\): \d point\(s\) \((\S+)\)", out, re.M)
    try:
        assert code == 0, err
        assert [(spec, points) for _, spec, points in ids] == [("0-1", "0-1"), ("0", "2")]
        (sweep_dir,) = run_root.iterdir()
        assert (sweep_dir / "jobs.txt").read_text().split() == [ids[0][0], ids[1][0]]
        points = sorted(p for p in sweep_dir.iterdir() if (p / "config.yaml").is_file())
        assert [(p / "jobs.txt").read_text().split() for p in points] == [
            [f"{ids[0][0]}_0"], [f"{ids[0][0]}_1"], [f"{ids[1][0]}_0"]]
        assert (sweep_dir / "job-2.sbatch").read_text().count("SLURM_ARRAY_TASK_ID + 2") == 1
        queued = subprocess.run(["squeue", "-h", "-r", "-j", ",".join(i for i, _, _ in ids), "-o", "%i"],
                                capture_output=True, text=True).stdout.split()
        assert sorted(queued) == sorted([f"{ids[0][0]}_0", f"{ids[0][0]}_1", f"{ids[1][0]}_0"])
    finally:
        subprocess.run(["scancel", *(i for i, _, _ in ids)], capture_output=True)
    listed = subprocess.run([sys.executable, "-m", "launcher.cli", "runs", "--sweep", str(sweep_dir)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert all(lr in listed.stdout for lr in ("0.001", "0.002", "0.003")), listed.stdout
    code = cli.main(["--resume", str(sweep_dir), "--dry-run", "--no-preflight"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert re.findall(r"^#SBATCH --array=(\S+)$", out, re.M) == ["0-1", "0"]
