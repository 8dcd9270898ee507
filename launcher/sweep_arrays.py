"""A sweep's points as one or more SLURM job arrays: SLURM refuses array task ids at or above its
MaxArraySize (`scontrol show config`), so a larger sweep becomes several arrays, each over its
own contiguous range of points.

Array k starts at point `offset` = k * MaxArraySize: its task t trains point offset + t (line offset + t + 1 of
runs.txt), so every task id stays below MaxArraySize while runs.txt, sweep.yaml and the points'
directories are those of a single array. Each array id goes into the sweep's jobs.txt, each
task's ARRAY_TASK into its point's jobs.txt, which is all `launch runs --sweep` and
`launch --resume SWEEP_DIR` read. TF-free, login-node side.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from core import slurm
from launcher import resume


@dataclass
class SweepArray:
    """One job array of a sweep: its points (Planned), the point its task 0 trains, its script."""

    planned: list  # launcher.sweep.Planned, in index order
    offset: int
    script: str = ""

    def task_ids(self) -> str:
        """sbatch --array ids without the limit: `0-999` for a range, `1,3` otherwise."""
        ids = [p.point.index - self.offset for p in self.planned]
        if ids == list(range(ids[0], ids[-1] + 1)) and len(ids) > 1:
            return f"{ids[0]}-{ids[-1]}"
        return ",".join(map(str, ids))

    def points(self) -> str:
        first, last = self.planned[0].point.index, self.planned[-1].point.index
        return f"{first}-{last}" if last > first else str(first)


max_array_size = slurm.max_array_size  # a name of this module: tests inject a smaller limit


def split(planned: list, limit: int | None) -> list[SweepArray]:
    """The points (in index order) as arrays whose task ids stay below `limit` (None: one array).
    Array k covers points k * limit to (k + 1) * limit - 1, so a point keeps its array's offset
    and task id when a resume submits it again (`--array=1,3` below the limit, as before)."""
    arrays: list[SweepArray] = []
    for item in planned:
        offset = item.point.index // limit * limit if limit else 0
        if not arrays or arrays[-1].offset != offset:
            arrays.append(SweepArray([], offset))
        arrays[-1].planned.append(item)
    return arrays


def say_split(arrays: list[SweepArray], limit: int | None) -> None:
    """One plain line on stderr when the sweep needs more than one array."""
    if len(arrays) > 1:
        ranges = ", ".join(f"points {a.points()}" for a in arrays)
        print(f"launch: note: this cluster's MaxArraySize is {limit}, so the sweep is split into "
              f"{len(arrays)} job arrays: {ranges}", file=sys.stderr, flush=True)


def submit_all(arrays: list[SweepArray], submit, held: bool, sweep_dir: Path) -> list[str]:
    """Submits every array (`submit(script)` returns its id). With several arrays each is
    submitted held, so that a refusal of a later one cancels the earlier ones before any task
    ran; the caller releases them (`release_all`) once the ids are recorded."""
    ids: list[str] = []
    hold = held or len(arrays) > 1
    try:
        for array in arrays:
            ids.append(submit(resume.held(array.script, sweep_dir) if hold else array.script))
    except Exception:
        for job_id in ids:
            resume.cancel(job_id)
        raise
    return ids


def release_all(ids: list[str], sweep_dir: Path) -> None:
    for job_id in ids:
        resume.release(job_id, sweep_dir)
