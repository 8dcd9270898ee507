"""Training curves from history.csv and lr.csv, redrawn after an epoch at most once a minute.

While training runs, the chief's `LiveCurves` has a helper process redraw them (`python -m
training.report.curves --follow RUN_DIR`) at the lowest CPU priority, so drawing never takes
time from the training steps; the chief draws them once more itself when training ends. A run
whose epochs take seconds gets its plots at its end (and every minute or so while it lasts), so
a short run never starts the helper at all. The figures are built with the object-oriented
`Figure` API rather than pyplot: pyplot keeps every figure in a global registry, which leaks
memory in a process that redraws the same plots for hundreds of epochs. matplotlib is imported
on first use so that the CSV readers here (used by summary.py and the run listing) stay cheap to
import.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from core import rundir
from core.fsutil import atomic_path

LR_CSV = rundir.LR_LOG
FIGSIZE = (8.0, 5.0)  # inches
DPI = 100  # with FIGSIZE: 800 x 500 pixel PNGs
PLOTS = ("loss.png", "accuracy.png", "lr.png")
MIN_INTERVAL_S = 60.0  # between live redraws, and from the start of training to the first


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
               ylim: tuple[float, float] | None = None, drawn: dict | None = None) -> Path | None:
    """Draws each non-empty (label, x, y, style) line; None when there is nothing to draw.

    `drawn` maps a path to what was last drawn there; a plot whose data did not change since is
    not drawn again.
    """
    lines = [line for line in lines if line[1]]
    if not lines:
        return None
    content = (title, xlabel, ylabel, repr(lines), ylim)
    if drawn is not None:
        if drawn.get(path) == content and path.is_file():
            return path
        drawn[path] = content
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
    # Fixed margins instead of tight_layout, which draws the figure once more to measure it (a
    # third of the plot's cost); the labels of an 800 x 500 plot fit in these.
    fig.subplots_adjust(left=0.125, right=0.97, bottom=0.1, top=0.93)
    return save_figure(fig, path)


def write_curves(run_dir: str | Path, drawn: dict | None = None) -> list[Path]:
    """Rewrites report/loss.png, report/accuracy.png and report/lr.png from the run's CSVs.

    Only the chief (or its helper process) calls this. A plot with no data yet (e.g. lr.csv not
    written) is skipped; when lr.csv is absent the per-epoch lr column of history.csv is drawn
    instead. With `drawn` (kept between calls), a plot whose data did not change is left as is.

    Returns:
        The paths of the plots, in the order loss, accuracy, lr.
    """
    run_dir = Path(run_dir)
    report = run_dir / rundir.REPORT
    history = read_history(run_dir)
    written = [
        _line_plot(report / "loss.png", "Loss", "epoch", "loss", [
            ("train", *_series(history, "loss"), "-"),
            ("validation", *_series(history, "val_loss"), "-"),
        ], drawn=drawn),
        _line_plot(report / "accuracy.png", "Accuracy", "epoch", "accuracy", [
            ("train top-1", *_series(history, "accuracy"), "-"),
            ("validation top-1", *_series(history, "val_accuracy"), "-"),
            ("train top-5", *_series(history, "top5"), "--"),
            ("validation top-5", *_series(history, "val_top5"), "--"),
        ], ylim=(0.0, 1.02), drawn=drawn),  # fixed, so plots of different runs compare at a glance
    ]
    steps, lrs = read_lr(run_dir)
    if steps:
        written.append(_line_plot(report / "lr.png", "Learning rate", "step", "learning rate",
                                  [("lr", steps, lrs, "-")], drawn=drawn))
    else:
        written.append(_line_plot(report / "lr.png", "Learning rate (per epoch)", "epoch",
                                  "learning rate", [("lr", *_series(history, "lr"), "-")], drawn=drawn))
    return [path for path in written if path is not None]


class LiveCurves:
    """The chief's live curves: `update()` after each epoch's CSV rows, `close()` at the end.

    A helper process redraws the plots at the lowest CPU priority (nice 19), so on a node whose
    cores the training steps keep busy it draws only with time nothing else wants: the plots may
    lag an epoch or more behind, never the steps. Requests that come while it draws are answered
    by one drawing of the files as they are then. `close()` ends the helper and draws the final
    plots in this process, so they always show every finished epoch.

    An update sooner than `min_interval_s` after the last redraw (or after this object was made,
    at the start of training) is skipped: the next one after the interval draws every epoch up
    to it. On a node with few cores even a nice-19 process takes cycles from the training steps,
    and a PNG rewrite every few seconds tells nobody anything a minute's would not.

    Args:
        log: called with one line when the helper cannot run (the plots are then drawn here,
            after each epoch, as before).
        min_interval_s: the least time between two redraws while training runs.
    """

    MAX_STARTS = 3  # a helper that keeps dying is given up for in-process drawing

    def __init__(self, run_dir: str | Path, log=None, min_interval_s: float = MIN_INTERVAL_S):
        self.run_dir = Path(run_dir)
        self.log = log or (lambda line: None)
        self.min_interval_s = min_interval_s
        self._next_draw = time.monotonic() + min_interval_s
        self._helper: subprocess.Popen | None = None
        self._starts = 0
        self._in_process = False

    def _start(self) -> subprocess.Popen | None:
        if self._starts >= self.MAX_STARTS:
            self.log(f"the curve helper stopped {self._starts} times; the curves are drawn in the training "
                     "process from now on")
            self._in_process = True
            return None
        self._starts += 1
        package_root = str(Path(__file__).resolve().parents[2])  # where `training` is importable from
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root,
                                                                          os.environ.get("PYTHONPATH")]))}
        try:
            return subprocess.Popen([sys.executable, "-m", "training.report.curves", "--follow",
                                     str(self.run_dir)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    env=env, close_fds=True)
        except OSError as err:
            self.log(f"cannot start the curve helper ({err}); the curves are drawn in the training process")
            self._in_process = True
            return None

    def update(self) -> None:
        """Asks for the plots to be redrawn from the CSV files as they are now; returns at once.
        Skipped within `min_interval_s` of the last redraw."""
        now = time.monotonic()
        if now < self._next_draw:
            return
        self._next_draw = now + self.min_interval_s
        if self._in_process:
            write_curves(self.run_dir)
            return
        if self._helper is None or self._helper.poll() is not None:
            self._helper = self._start()
            if self._helper is None:
                write_curves(self.run_dir)
                return
        try:
            os.write(self._helper.stdin.fileno(), b"\n")
        except OSError:  # it died between the check and the write: the next update starts another
            self._helper = None

    def close(self, draw: bool = True) -> list[Path]:
        """Ends the helper; with `draw`, draws the final plots here. Returns the plots written."""
        helper, self._helper = self._helper, None
        if helper is not None:
            helper.kill()  # not SIGTERM: at nice 19 on a busy node it could take seconds to act on it
            helper.wait()
            helper.stdin.close()
            # A plot it was writing when killed leaves its temporary file behind.
            for name in PLOTS:
                for stale in (self.run_dir / rundir.REPORT).glob(f".{name}.*.tmp*"):
                    stale.unlink(missing_ok=True)
        return write_curves(self.run_dir) if draw else []


def follow(run_dir: Path) -> int:
    """The helper's loop: one drawing per batch of requests read from stdin, until stdin ends."""
    os.nice(19)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # SLURM's time-limit warning is the trainer's business
    drawn: dict = {}
    while os.read(sys.stdin.fileno(), 4096):  # every request already waiting is answered by this drawing
        write_curves(run_dir, drawn)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.report.curves",
                                     description="Draws a run's training curves into its report folder.")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--follow", action="store_true",
                        help="redraw for each line read on stdin, until it ends (the trainer's helper)")
    args = parser.parse_args(argv)
    if args.follow:
        return follow(args.run_dir)
    for path in write_curves(args.run_dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
