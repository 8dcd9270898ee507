"""`launch convert --array-tasks K`: one SLURM job array whose tasks each write their slice of the
shards, with the same output as the single-process converter."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from training.data.convert_parts import bounds


def photo_tree(root: Path) -> Path:
    """Two classes, train and val, and one file the converter skips."""
    for split, count in (("train", 5), ("val", 2)):
        for cls in ("cat", "dog"):
            folder = root / "photos" / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (40, 30), (i * 40, 90, 200 if cls == "dog" else 10)).save(folder / f"{i}.jpg")
    (root / "photos" / "train" / "cat" / "empty.jpg").write_bytes(b"")
    return root / "photos"


@pytest.mark.parametrize("total, tasks", [(7, 3), (3, 5), (128, 8), (1, 1)])
def test_every_shard_belongs_to_exactly_one_task(total, tasks):
    slices = [bounds(total, task, tasks) for task in range(tasks)]
    covered = [i for start, stop in slices for i in range(start, stop)]
    assert covered == list(range(total))
    assert max(b - a for a, b in slices) - min(b - a for a, b in slices) <= 1


def test_dry_run_prints_one_array_script(launch_cli, tmp_path):
    done = launch_cli("convert", photo_tree(tmp_path), tmp_path / "shards", "--shards", "4",
                      "--array-tasks", "3", "--cluster", "slurm", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "#SBATCH --array=0-2\n" in done.stdout and "convert-%A_%a.out" in done.stdout
    assert "--array-tasks 3 --shards-train 4" in done.stdout
    assert not (tmp_path / "shards").exists()


def test_zero_array_tasks_is_one_line_and_exit_2(launch_cli, tmp_path):
    done = launch_cli("convert", photo_tree(tmp_path), tmp_path / "shards", "--array-tasks", "0")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "--array-tasks 0" in done.stderr


@pytest.mark.slurm
def test_array_job_writes_the_same_shards_as_one_process(launch_cli, tmp_path, slurm_cluster):
    src = photo_tree(tmp_path)
    flags = ["--shards-train", "3", "--shards-val", "2", "--shards-test", "1", "--workers", "1"]
    here = subprocess.run([sys.executable, "-m", "training.data.convert", src, tmp_path / "one", *flags],
                          capture_output=True, text=True, timeout=120)
    assert here.returncode == 0, here.stderr
    done = launch_cli("convert", src, tmp_path / "arr", "--shards", "3", "--shards-val", "2",
                      "--shards-test", "1", "--workers", "1", "--array-tasks", "2", "--cpus", "1",
                      "--time", "5", "--run-root", tmp_path / "runs", "--wait", timeout=170)
    assert done.returncode == 0, done.stdout + done.stderr
    array = re.search(r"submitted job array (\d+) \(--array=0-1\)", done.stdout).group(1)
    # Accounting is off on the local cluster: squeue still shows ended jobs for MinJobAge.
    tasks = subprocess.run(["squeue", "-h", "-r", "--states=all", "-j", array, "-o", "%i|%T"],
                           capture_output=True, text=True).stdout.split()
    assert sorted(tasks) == [f"{array}_0|COMPLETED", f"{array}_1|COMPLETED"]
    names = sorted(p.name for p in (tmp_path / "arr").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "one").iterdir())  # no .parts/, no temporaries
    one, arr = (json.loads((tmp_path / d / "labels.json").read_text()) for d in ("one", "arr"))
    assert arr["classes"] == one["classes"] == ["cat", "dog"]
    assert {n: e["records"] for n, e in arr["shards"].items()} == {n: e["records"] for n, e in one["shards"].items()}
    assert arr == one  # counts, skipped, stored settings, sizes too
    assert (tmp_path / "arr" / "skipped.txt").read_text() == (tmp_path / "one" / "skipped.txt").read_text()
    assert "every task has written its shards" in "\n".join(
        p.read_text() for p in (tmp_path / "runs" / "logs").glob(f"convert-{array}_*.err"))


def test_a_requeued_task_rewrites_only_its_shards_and_the_last_task_writes_labels(tmp_path):
    from training.data.convert import convert, main

    src, out = photo_tree(tmp_path), tmp_path / "arr"
    shards = {"train": 3, "validation": 2, "test": 1}
    quiet = {"workers": 1, "log": lambda _: None}
    convert(src, out, shards, part=(0, 2), **quiet)
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("*-of-*")}
    assert sorted(first) == ["train-00000-of-00003", "train-00001-of-00003"]  # task 0's slice: 2 of the 5 shards
    assert not (out / "labels.json").exists() and main(["--finalize", str(out)]) == 1  # task 1 missing
    convert(src, out, shards, part=(0, 2), **quiet)  # task 0 requeued: the same shards, rewritten
    assert sorted(p.name for p in out.glob("*-of-*")) == sorted(first)
    assert not (out / "labels.json").exists()
    convert(src, out, shards, part=(1, 2), **quiet)
    convert(src, tmp_path / "one", shards, **quiet)
    assert (out / "labels.json").read_text() == (tmp_path / "one" / "labels.json").read_text()
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    assert main(["--finalize", str(out)]) == 0
