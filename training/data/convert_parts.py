"""The converter as K array tasks: which shards task i writes, its part record, and labels.json.

    python -m training.data.convert SRC OUT --array-tasks K [--task I]   # I: $SLURM_ARRAY_TASK_ID
    python -m training.data.convert --finalize OUT

Every task scans the same tree with the same seed, so all of them plan the same shards; task i
writes the contiguous slice `bounds(total, i, K)` of that plan, each shard atomically (a
temporary name, then a rename), so a requeued task rewrites only its own shards. It then writes
its part record, `OUT/.parts/task-IIIII-of-KKKKK.json` (manifest entries, counts, skipped files),
and, when every task's record is there, merges them into skipped.txt and labels.json and removes
`.parts/`. The last task to finish does that, whichever it is, so a requeued or resubmitted task
still completes the output and no second job has to wait on the array; two tasks finishing at
once write the same bytes, each by a rename. `--finalize OUT` does the merge by hand.
Without TensorFlow.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from training.data import DataError
from training.data.records import LABELS_FILE, SKIPPED_FILE, skipped_line, write_labels, write_skipped, write_text

PARTS_DIR = ".parts"


def bounds(total: int, task: int, tasks: int) -> tuple[int, int]:
    """[start, stop) of task `task`'s shards: contiguous, sizes differing by at most one."""
    return task * total // tasks, (task + 1) * total // tasks


def part_path(out: Path, task: int, tasks: int) -> Path:
    return Path(out) / PARTS_DIR / f"task-{task:05d}-of-{tasks:05d}.json"


def write_part(out: Path, task: int, tasks: int, record: dict) -> None:
    """Records what task `task` wrote; `record` holds classes, counts, skipped, stored, the
    manifest of its shards (`shards`) and the names of every shard of the plan (`expected`)."""
    write_text(part_path(out, task, tasks), json.dumps(record, indent=1) + "\n")


def finalize(out: Path, log=lambda _: None) -> bool:
    """Writes skipped.txt and labels.json once every task's part record exists; logs what was skipped.

    Returns:
        True when the output is complete (now or already), False while tasks are missing.

    Raises:
        DataError: no part records, or a record names a shard that is not on disk.
    """
    out = Path(out)
    parts_dir = out / PARTS_DIR
    names = sorted(parts_dir.glob("task-*-of-*.json")) if parts_dir.is_dir() else []
    if not names:
        if (out / LABELS_FILE).is_file():
            return True
        raise DataError(f"{out} holds no {PARTS_DIR}/ records of an array conversion; run "
                        "launch convert SRC OUT --array-tasks K first")
    tasks = int(names[0].stem.rsplit("-", 1)[1])
    try:
        records = [json.loads(part_path(out, t, tasks).read_text()) for t in range(tasks)]
    except FileNotFoundError:
        return (out / LABELS_FILE).is_file()  # a task still running, or a finalizer that finished
    first = records[0]
    counts = {split: sum(r["counts"].get(split, 0) for r in records) for split in first["counts"]}
    manifest = {name: entry for r in records for name, entry in r["shards"].items()}
    missing = sorted(set(first["expected"]) - set(manifest))
    absent = sorted(name for name in manifest if not (out / name).is_file())
    if missing or absent:
        raise DataError(f"{out}: shard(s) {', '.join((missing + absent)[:3])} missing although every task "
                        "reported; convert again into a new folder")
    skipped = sorted({tuple(item) for r in records for item in r["skipped"]})
    write_skipped(out, skipped)
    log(skipped_line(skipped, out / SKIPPED_FILE))
    write_labels(out, first["classes"], counts, len(skipped), manifest, stored=first["stored"])  # last
    shutil.rmtree(parts_dir, ignore_errors=True)
    return True
