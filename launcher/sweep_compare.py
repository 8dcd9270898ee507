"""`launch runs --sweep SWEEP_DIR`: the points of a sweep side by side, best first.

Prints one row per point (its values, state, best validation accuracy and loss, the epoch of the
best, wall time) sorted by the target metric, and writes SWEEP_DIR/compare.csv and
SWEEP_DIR/compare.png (validation curves of every point). States come from launcher/runs.py
(one squeue call, at most one sacct call, for the whole sweep). TensorBoard's HParams tab shows
the same points: every run's chief writes its config as hparams at its tensorboard/ root,
above train/ and validation/ (training/loop.py), so
`tensorboard --logdir SWEEP_DIR` compares them there too.

Login-node side: no TensorFlow; matplotlib only for the plot.
"""
from __future__ import annotations

import csv
import io
import sys
from dataclasses import dataclass
from pathlib import Path

from core import fsutil, rundir
from launcher.runs import list_runs
from launcher.sweep_points import show
from launcher.sweep_resume import points_of, read_sweep

COMPARE_CSV = "compare.csv"
COMPARE_PNG = "compare.png"
METRICS = {"val_accuracy": max, "val_loss": min}  # target metric -> which end is best


@dataclass
class Row:
    index: int
    values: dict
    run_dir: Path
    state: str
    best_val_accuracy: float | None
    best_val_loss: float | None
    best_epoch: int | None  # epoch of the best target metric
    epochs_done: int
    wall_time_s: float | None  # summed epoch times from history.csv
    curves: dict[str, list[tuple[int, float]]]  # metric -> [(epoch, value)]


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def read_history(run_dir: Path) -> list[dict]:
    try:
        with open(run_dir / rundir.HISTORY, newline="") as fh:
            return list(csv.DictReader(fh))
    except OSError:
        return []


def make_row(index: int, values: dict, run_dir: Path, state: str, metric: str) -> Row:
    history = read_history(run_dir)
    curves = {m: [(int(float(r["epoch"])), v) for r in history if (v := _number(r.get(m))) is not None]
              for m in METRICS}
    best = METRICS[metric](curves[metric], key=lambda ev: ev[1]) if curves[metric] else None
    times = [t for r in history if (t := _number(r.get("epoch_time_s"))) is not None]
    return Row(index, values, run_dir, state,
               max((v for _, v in curves["val_accuracy"]), default=None),
               min((v for _, v in curves["val_loss"]), default=None),
               best[0] if best else None, len(history), round(sum(times), 1) if times else None, curves)


def compare(sweep_dir: Path, metric: str = "val_accuracy") -> list[Row]:
    """The sweep's points, best `metric` first; points with no epoch yet last, in index order."""
    points = points_of(sweep_dir, read_sweep(sweep_dir))
    runs, _ = list_runs(sweep_dir)
    states = {Path(r.run_dir).name: r.state for r in runs}
    rows = [make_row(p.index, p.values, d, states.get(d.name, "NO RUN DIR"), metric) for p, d in points]
    best = METRICS[metric]

    def key(row: Row):
        value = row.best_val_accuracy if metric == "val_accuracy" else row.best_val_loss
        if value is None:
            return (1, 0.0, row.index)
        return (0, -value if best is max else value, row.index)

    return sorted(rows, key=key)


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def table(rows: list[Row]) -> list[list[str]]:
    keys = list(dict.fromkeys(k for r in rows for k in r.values))
    out = [["POINT", *keys, "STATE", "BEST VAL ACC", "BEST VAL LOSS", "BEST EPOCH", "EPOCHS", "WALL S", "RUN DIR"]]
    for r in rows:
        out.append([str(r.index), *(show(r.values[k]) if k in r.values else "-" for k in keys), r.state,
                    _cell(r.best_val_accuracy), _cell(r.best_val_loss), _cell(r.best_epoch), str(r.epochs_done),
                    "-" if r.wall_time_s is None else f"{r.wall_time_s:.1f}", r.run_dir.name])
    return out


def format_table(cells: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]) - 1)]
    return "\n".join("  ".join([*(c.ljust(w) for c, w in zip(row, widths)), row[-1]]) for row in cells)


def write_csv(sweep_dir: Path, cells: list[list[str]]) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([c.lower().replace(" ", "_") for c in cells[0]])
    writer.writerows(cells[1:])
    fsutil.atomic_write_text(sweep_dir / COMPARE_CSV, buffer.getvalue())
    return sweep_dir / COMPARE_CSV


def write_plot(sweep_dir: Path, rows: list[Row]) -> Path:
    import matplotlib  # noqa: PLC0415 (only this command pays for it)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, metric in zip(axes, METRICS):
        for r in sorted(rows, key=lambda r: r.index):
            if r.curves[metric]:
                epochs, values = zip(*r.curves[metric])
                label = " ".join(f"{k.rsplit('.', 1)[-1]}={show(v)}" for k, v in r.values.items())
                ax.plot(epochs, values, marker="o", markersize=3, label=f"{r.index}: {label}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(sweep_dir.name)
    fig.tight_layout()
    path = sweep_dir / COMPARE_PNG
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)  # atomic: a reader never sees half a plot
    return path


def main(sweep_dir: str, metric: str) -> int:
    """`launch runs --sweep DIR [--metric val_accuracy|val_loss]`; returns the exit code."""
    path = Path(sweep_dir).expanduser()
    if not rundir.is_sweep_dir(path):
        print(f"launch runs: {path} is not a sweep directory (no sweep.yaml); pass the folder that "
              "launch --sweep printed", file=sys.stderr)
        return 2
    rows = compare(path, metric)
    cells = table(rows)
    print(format_table(cells))
    written = [write_csv(path, cells)]
    try:
        written.append(write_plot(path, rows))
    except ImportError:
        print("launch runs: matplotlib is not installed, so no compare.png; pip install matplotlib",
              file=sys.stderr)
    print(f"sorted by best {metric}; wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    return 0
