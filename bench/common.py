"""What every benchmark shares: the figure record, its summary line, and the JSON file.

The machines these run on are shared and noisy, so a figure is always a ratio against a
baseline measured in the same process, interleaved with it and repeated. Throughputs keep the
best round (interference only ever slows a round down, as `timeit` argues); the launcher
latency, timed by its own script, keeps the median. Every round's number is kept in
`samples` so the spread can be judged.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from core.fsutil import atomic_write_text


@dataclass
class Figure:
    """One measured figure and whether it met its goal."""

    name: str  # benchmark.figure, e.g. input_pipeline.project_vs_keras
    value: float | None  # what was measured, in `unit`; None when not measured
    baseline: float | None  # the same quantity for the reference, in `unit`
    unit: str  # e.g. img/s, steps/s, s
    goal: str  # the goal in words, e.g. "ratio >= 2.0"; "" for a figure that is only reported
    passed: bool | None  # None: no goal, or not measured
    what: str = ""  # what value and baseline are, one line
    samples: dict = field(default_factory=dict)  # per-round numbers and anything else measured
    evidence: dict = field(default_factory=dict)  # profile summary etc. when a goal is missed

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.baseline:
            return None
        return self.value / self.baseline

    @property
    def status(self) -> str:
        if self.value is None:
            return "NOT MEASURED"
        if self.passed is None:
            return "INFO"
        return "PASS" if self.passed else "MISS"

    def line(self) -> str:
        """The one summary line: name, value, baseline, ratio, goal, status."""
        if self.value is None:
            return f"{self.name:<42} {self.what}; goal {self.goal or '-'}  {self.status}"
        ratio = "-" if self.ratio is None else f"{self.ratio:.3f}"
        baseline = "-" if self.baseline is None else f"{_num(self.baseline)} {self.unit}"
        return (f"{self.name:<42} value {_num(self.value):>9} {self.unit:<7} baseline {baseline:<17} "
                f"ratio {ratio:>6}  goal {self.goal or '-':<22} {self.status}")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "ratio": self.ratio, "status": self.status}


def _num(x: float) -> str:
    return f"{x:.4g}" if abs(x) < 1e4 else f"{x:.0f}"


def ratio_figure(name: str, value: float, baseline: float, unit: str, minimum: float | None,
                 what: str, samples: dict | None = None) -> Figure:
    """A figure whose goal is value / baseline >= minimum (None: reported only)."""
    ratio = value / baseline if baseline else math.nan
    return Figure(name, value, baseline, unit, "" if minimum is None else f"ratio >= {minimum:g}",
                  None if minimum is None else ratio >= minimum, what, samples or {})


def best_rate(rounds: Sequence[float]) -> float:
    """The best of several throughput rounds."""
    return max(rounds)


def machine() -> dict:
    """What the numbers were measured on."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"python": platform.python_version(), "platform": platform.platform(), "cores": cores,
            "load_average": load}


def write_json(path: str | Path, figures: list[Figure], **extra) -> None:
    """Writes every number of `figures` to `path`, atomically."""
    data = {"figures": [f.to_dict() for f in figures], "machine": machine(), **extra}
    atomic_write_text(path, json.dumps(data, indent=1, default=str) + "\n")


def read_figures(path: str | Path) -> list[Figure]:
    data = json.loads(Path(path).read_text())
    names = {f.name for f in dataclasses.fields(Figure)}
    return [Figure(**{k: v for k, v in f.items() if k in names}) for f in data["figures"]]


def standard_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """Options every benchmark script takes."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--work-dir", type=Path,
                        help="folder with the generated images and shards (made there when missing; "
                             "default: a temporary folder removed at the end)")
    return parser


def report(figures: list[Figure], json_path: Path | None, **extra) -> None:
    """Prints one line per figure and writes the JSON file when asked."""
    for figure in figures:
        print(figure.line(), flush=True)
    if json_path is not None:
        write_json(json_path, figures, **extra)


def log(message: str) -> None:
    """Progress goes to stderr so stdout holds only summary lines."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def work_dir(given: Path | None) -> Iterator[Path]:
    """The folder for generated data: `given` (kept afterwards), else a temporary one removed at
    the end."""
    if given is not None:
        yield Path(given)
        return
    path = Path(tempfile.mkdtemp(prefix="bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
