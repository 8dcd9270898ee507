"""Training curves from history.csv and lr.csv, redrawn by the chief after every epoch.

The figures are built with the object-oriented `Figure` API rather than pyplot: pyplot keeps
every figure in a global registry, which leaks memory in a training process that redraws
the same plots for hundreds of epochs. matplotlib is imported on first use so that the CSV
readers here (used by summary.py and the run listing) stay cheap to import.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

from core import rundir
from core.fsutil import atomic_path

LR_CSV = rundir.LR_LOG
FIGSIZE = (8.0, 5.0)  # inches
DPI = 100  # with FIGSIZE: 800 x 500 pixel PNGs
PLOTS = ("loss.png", "accuracy.png", "lr.png")


def _number(text: str | None) -> float | None:
    """Parses one CSV cell; empty, malformed and non-finite cells become None."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def read_history(run_dir: str | Path) -> list[dict[str, float | None]]:
    """Rows of RUN_DIR/history.csv with numeric values; [] when the file is absent.

    Rows without a parsable epoch are dropped; other missing cells are None.
    """
    path = Path(run_dir) / rundir.HISTORY
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        rows = [{key: _number(value) for key, value in row.items() if key} for row in csv.DictReader(fh)]
    return [row for row in rows if row.get("epoch") is not None]


def read_lr(run_dir: str | Path) -> tuple[list[int], list[float]]:
    """(steps, learning rates) from RUN_DIR/lr.csv, sorted by step; empty when absent.

    The file is appended to while training runs, so its last line may be cut short; such
    lines are skipped. After a requeue the loop resumes from a checkpoint and logs some steps
    a second time; the later value of a step wins.
    """
    path = Path(run_dir) / LR_CSV
    if not path.is_file():
        return [], []
    by_step: dict[int, float] = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            step, lr = _number(row.get("step")), _number(row.get("lr"))
            if step is not None and lr is not None:
                by_step[int(step)] = lr
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def _series(history: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) for the rows where `key` has a value."""
    pairs = [(row["epoch"], row.get(key)) for row in history if row.get(key) is not None]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def new_figure(figsize: tuple[float, float] = FIGSIZE):
    """A matplotlib Figure drawn with the Agg backend (compute nodes have no display)."""
    import matplotlib

    matplotlib.use("Agg")  # before anything imports pyplot, which would pick a GUI backend
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def save_figure(fig, path: Path) -> Path:
    """Writes `fig` as PNG atomically, so a reader never sees half an image."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    return path


def _line_plot(path: Path, title: str, xlabel: str, ylabel: str,
               lines: list[tuple[str, list[float], list[float], str]],
               ylim: tuple[float, float] | None = None) -> Path | None:
    """Draws each non-empty (label, x, y, style) line; None when there is nothing to draw."""
    lines = [line for line in lines if line[1]]
    if not lines:
        return None
    fig = new_figure()
    ax = fig.add_subplot()
    for label, xs, ys, style in lines:
        # Markers make a single epoch visible; a line through one point draws nothing.
        ax.plot(xs, ys, style, label=label, marker="o" if len(xs) < 50 else None, markersize=4)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs and steps are whole numbers
    xs = [x for line in lines for x in line[1]]
    if min(xs) == max(xs):  # one epoch: widen, or the locator falls back to fractional ticks
        ax.set_xlim(xs[0] - 1, xs[0] + 1)
    if ylim:
        ax.set_ylim(*ylim)
    ax.legend(loc="best")
    fig.tight_layout()
    return save_figure(fig, path)


def write_curves(run_dir: str | Path) -> list[Path]:
    """Rewrites report/loss.png, report/accuracy.png and report/lr.png from the run's CSVs.

    Only the chief calls this. A plot with no data yet (e.g. lr.csv not written) is skipped;
    when lr.csv is absent the per-epoch lr column of history.csv is drawn instead.

    Returns:
        The paths written, in the order loss, accuracy, lr.
    """
    run_dir = Path(run_dir)
    report = run_dir / rundir.REPORT
    history = read_history(run_dir)
    written = [
        _line_plot(report / "loss.png", "Loss", "epoch", "loss", [
            ("train", *_series(history, "loss"), "-"),
            ("validation", *_series(history, "val_loss"), "-"),
        ]),
        _line_plot(report / "accuracy.png", "Accuracy", "epoch", "accuracy", [
            ("train top-1", *_series(history, "accuracy"), "-"),
            ("validation top-1", *_series(history, "val_accuracy"), "-"),
            ("train top-5", *_series(history, "top5"), "--"),
            ("validation top-5", *_series(history, "val_top5"), "--"),
        ], ylim=(0.0, 1.02)),  # fixed, so plots of different runs compare at a glance
    ]
    steps, lrs = read_lr(run_dir)
    if steps:
        written.append(_line_plot(report / "lr.png", "Learning rate", "step", "learning rate",
                                  [("lr", steps, lrs, "-")]))
    else:
        written.append(_line_plot(report / "lr.png", "Learning rate (per epoch)", "epoch",
                                  "learning rate", [("lr", *_series(history, "lr"), "-")]))
    return [path for path in written if path is not None]
