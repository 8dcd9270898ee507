"""Prediction grids and the confusion matrix from one pass of a model over the validation set.

Nothing here imports TensorFlow: the caller hands in a model (anything with
`predict_on_batch`) and a finite, batched dataset of (images, labels); tensors are converted
with `.numpy()`. Only a bounded sample of images is kept, so ImageNet-sized validation sets fit.
"""
from __future__ import annotations

import csv
import datetime
import io
import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from core import rundir
from core.fsutil import atomic_path, atomic_write_text
from training.report.curves import new_figure, save_figure

GRID_SIDE = 5  # prediction grids are GRID_SIDE x GRID_SIDE
MAX_CONFUSION_CLASSES = 30  # above this a matrix is unreadable: list the most confused pairs
MOST_CONFUSED_ROWS = 20
TOP_K = 5
SAMPLE_SEED = 0  # the correct-prediction grid is a seeded random sample: same run, same grid


def _numpy(x: Any) -> np.ndarray:
    return np.asarray(x.numpy() if hasattr(x, "numpy") else x)


def probabilities(outputs: np.ndarray) -> np.ndarray:
    """Class probabilities; applies a softmax when the model returned logits."""
    out = np.asarray(outputs, dtype=np.float64)
    if out.min() >= 0 and np.allclose(out.sum(axis=1), 1.0, atol=1e-3):
        return out
    z = np.exp(out - out.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


class _Collector:
    """Accumulates metrics over batches and keeps the examples the grids will show."""

    def __init__(self, num_classes: int, keep: int):
        self.num_classes = num_classes
        self.keep = keep
        self.k = min(TOP_K, num_classes)
        self.confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.top_k_hits = 0
        self.loss_sum = 0.0  # cross-entropy, summed over examples
        self.rng = np.random.default_rng(SAMPLE_SEED)
        self.correct_seen = 0
        # (image uint8, true, predicted, confidence)
        self.correct: list[tuple[np.ndarray, int, int, float]] = []
        self.incorrect: list[tuple[np.ndarray, int, int, float]] = []

    def add(self, images: np.ndarray, labels: np.ndarray, probs: np.ndarray) -> None:
        pred = probs.argmax(axis=1)
        conf = probs[np.arange(len(pred)), pred]
        flat = labels * self.num_classes + pred
        self.confusion += np.bincount(flat, minlength=self.num_classes ** 2).reshape(self.confusion.shape)
        top = np.argsort(-probs, axis=1)[:, :self.k]
        self.top_k_hits += int((top == labels[:, None]).any(axis=1).sum())
        # Clipped as Keras clips it, so the value is comparable with history.csv's val_loss.
        true_probs = np.clip(probs[np.arange(len(labels)), labels], 1e-7, 1.0)
        self.loss_sum += float(-np.log(true_probs).sum())
        for i in np.flatnonzero(pred == labels):
            # Reservoir sampling: every correct example has the same chance to be shown.
            self.correct_seen += 1
            slot = len(self.correct)
            if slot >= self.keep:
                slot = self.rng.integers(self.correct_seen)
            if slot < self.keep:
                item = (_display(images[i]), int(labels[i]), int(pred[i]), float(conf[i]))
                if slot == len(self.correct):
                    self.correct.append(item)
                else:
                    self.correct[slot] = item
        # The most confident mistakes say most about what the model gets wrong.
        wrong = np.flatnonzero(pred != labels)
        full = len(self.incorrect) >= self.keep
        floor = min(c for *_, c in self.incorrect) if full else -1.0
        for i in wrong[np.argsort(-conf[wrong])][:self.keep]:
            if conf[i] <= floor:
                break
            self.incorrect.append((_display(images[i]), int(labels[i]), int(pred[i]), float(conf[i])))
        self.incorrect = sorted(self.incorrect, key=lambda item: -item[3])[:self.keep]


def _display(image: np.ndarray) -> np.ndarray:
    """An RGB 0..255 float image as uint8 for drawing (grayscale images gain three channels)."""
    image = np.clip(np.asarray(image, dtype=np.float32), 0, 255).astype(np.uint8)
    if image.ndim == 2 or image.shape[-1] == 1:
        image = np.repeat(image.reshape(image.shape[0], image.shape[1], 1), 3, axis=2)
    return image


def _short(name: str, width: int = 18) -> str:
    return name if len(name) <= width else name[:width - 1] + "…"


def _write_grid(path: Path, title: str, items: list, class_names: list[str], empty_text: str) -> Path:
    width, height = 10.0, 11.0  # inches: 1000 x 1100 pixels
    fig = new_figure((width, height))
    fig.suptitle(title)
    # One axes holds every tile, placed by its extent, and its caption as plain text: an axes per
    # tile (or tight_layout, or axis titles) made this plot cost most of the report's time.
    box = (0.02, 0.02, 0.96, 0.91)
    ax = fig.add_axes(box)
    ax.set_axis_off()
    cell_w, cell_h = width * box[2] / GRID_SIDE, height * box[3] / GRID_SIDE  # inches
    for n, (image, true, pred, conf) in enumerate(items[:GRID_SIDE * GRID_SIDE]):
        row, col = divmod(n, GRID_SIDE)
        # The image keeps its aspect inside the cell's lower 78 %, under a two-line caption.
        scale = min(0.9 * cell_w / image.shape[1], 0.78 * cell_h / image.shape[0])
        half_w, tall = image.shape[1] * scale / cell_w / 2, image.shape[0] * scale / cell_h
        ax.imshow(image, interpolation="nearest", aspect="auto",
                  extent=(col + 0.5 - half_w, col + 0.5 + half_w, row + 0.2 + tall, row + 0.2))
        caption = f"true: {_short(class_names[true])}\npred: {_short(class_names[pred])} ({conf:.0%})"
        ax.text(col + 0.5, row + 0.19, caption, ha="center", va="bottom", fontsize=8,
                color="darkgreen" if true == pred else "darkred")
    ax.set_xlim(0, GRID_SIDE)
    ax.set_ylim(GRID_SIDE, 0)  # row 0 at the top
    if not items:
        fig.text(0.5, 0.5, empty_text, ha="center", va="center", fontsize=14)
    return save_figure(fig, path)


def _write_confusion_png(path: Path, confusion: np.ndarray, class_names: list[str], accuracy: float) -> Path:
    n = len(class_names)
    rows = confusion.sum(axis=1, keepdims=True)
    # Row-normalised: each cell is the fraction of that true class predicted as the column.
    norm = np.divide(confusion, rows, out=np.zeros(confusion.shape), where=rows > 0)
    side = max(6.0, 0.35 * n + 3.0)
    fig = new_figure((side, side))
    ax = fig.add_subplot()
    shown = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    labels = [_short(name, 24) for name in class_names]
    ax.set_xticks(range(n), labels, rotation=90, fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"Confusion (row-normalised), accuracy {accuracy:.2%} over {int(confusion.sum())} images",
                 fontsize=10)
    if n <= 12:
        for (t, p), value in np.ndenumerate(norm):
            ax.text(p, t, f"{value:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if value > 0.5 else "black")
    fig.tight_layout()
    return save_figure(fig, path)


def most_confused(confusion: np.ndarray, class_names: list[str],
                  rows: int = MOST_CONFUSED_ROWS) -> list[dict]:
    """The off-diagonal (true, predicted) pairs with the highest counts, largest first."""
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:rows]
    totals = confusion.sum(axis=1)
    pairs = []
    for flat in order:
        true, pred = divmod(int(flat), confusion.shape[1])
        if off[true, pred] == 0:
            break
        count = int(off[true, pred])
        pairs.append({"true_class": class_names[true], "predicted_class": class_names[pred],
                      "count": count, "fraction_of_true": count / int(totals[true])})
    return pairs


def _write_most_confused(csv_path: Path, png_path: Path, pairs: list[dict]) -> tuple[Path, Path]:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["true_class", "predicted_class", "count", "fraction_of_true"])
    writer.writeheader()
    writer.writerows(pairs)
    atomic_write_text(csv_path, buf.getvalue())
    fig = new_figure((9.0, 1.2 + 0.3 * max(len(pairs), 1)))
    ax = fig.add_subplot()
    ax.axis("off")
    ax.set_title("Most confused class pairs")
    if pairs:
        cells = [[_short(p["true_class"], 30), _short(p["predicted_class"], 30), str(p["count"]),
                  f"{p['fraction_of_true']:.1%}"] for p in pairs]
        table = ax.table(cellText=cells, colLabels=["true class", "predicted as", "count", "of true class"],
                         loc="center", cellLoc="left")
        table.auto_set_font_size(False)
        table.set_fontsize(9)
    else:
        ax.text(0.5, 0.5, "no confusions", ha="center", va="center")
    fig.tight_layout()
    return csv_path, save_figure(fig, png_path)


def write_prediction_report(run_dir: str | Path, model: Any, dataset: Iterable, class_names: list[str],
                            max_batches: int | None = None, *, prefix: str = "",
                            checkpoint: str = "") -> dict[str, Any]:
    """Runs `model` over `dataset` and writes grids, confusion and metrics under report/.

    Writes report/<prefix>correct.png and <prefix>incorrect.png (5x5 grids, fewer images when
    there are not enough), <prefix>confusion.png for up to 30 classes, else
    <prefix>most_confused.csv + .png, and <prefix>predictions.json. Only the chief calls this,
    with a model that is not under a multi-worker strategy (e.g. checkpoints/best.h5 loaded
    afresh): a strategy model would wait for the other workers inside predict.

    Args:
        run_dir: the run directory.
        model: a Keras model mapping float32 RGB 0..255 images to class probabilities or logits.
        dataset: finite iterable of (images [B,H,W,3], labels [B] or one-hot [B,C]) batches.
        class_names: one name per model output.
        max_batches: stop after this many batches; None reads the whole dataset.
        prefix: prepended to every file name, e.g. "eval-val-" for training.evaluate.
        checkpoint: which weights these are ("best", a path...), recorded in the JSON.

    Returns:
        accuracy, top5 (top-k with k = min(5, classes)) and loss (cross-entropy), each None
        when the dataset was empty; examples; confusion (numpy int64 [true, predicted]);
        class_names, checkpoint and files (paths relative to run_dir).
    """
    run_dir = Path(run_dir)
    report = run_dir / rundir.REPORT
    class_names = [str(name) for name in class_names]
    num_classes = len(class_names)
    keep = GRID_SIDE * GRID_SIDE
    collector = _Collector(num_classes, keep)
    for index, (images, labels) in enumerate(dataset):
        if max_batches is not None and index >= max_batches:
            break
        images, labels = _numpy(images), _numpy(labels)
        labels = labels.argmax(axis=1) if labels.ndim == 2 else labels.reshape(-1)
        labels = labels.astype(np.int64)
        probs = probabilities(_numpy(model.predict_on_batch(images)))
        if probs.shape[1] != num_classes:
            raise ValueError(f"the model has {probs.shape[1]} outputs but {num_classes} class names "
                             "were given; pass the classes of model/model_spec.json")
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"label {int(labels.max() if labels.max() >= num_classes else labels.min())} "
                             f"is outside 0..{num_classes - 1}; check data.label_offset and data.num_classes")
        collector.add(images, labels, probs)
    confusion = collector.confusion
    examples = int(confusion.sum())
    # No examples gives None rather than 0.0, which a summary would show as a real accuracy.
    accuracy = float(np.trace(confusion) / examples) if examples else None
    top5 = float(collector.top_k_hits / examples) if examples else None
    loss = collector.loss_sum / examples if examples else None
    right, wrong = collector.correct_seen, examples - collector.correct_seen
    files = {
        "correct": _write_grid(
            report / f"{prefix}correct.png", f"Correct predictions (random sample of {right})",
            collector.correct, class_names, f"no correct predictions among {examples} images"),
        "incorrect": _write_grid(
            report / f"{prefix}incorrect.png", f"Most confident mistakes ({wrong} in all)",
            collector.incorrect, class_names, f"no incorrect predictions among {examples} images"),
    }
    if num_classes <= MAX_CONFUSION_CLASSES:
        files["confusion"] = _write_confusion_png(report / f"{prefix}confusion.png", confusion, class_names,
                                                  accuracy or 0.0)
    else:
        files["most_confused_csv"], files["most_confused"] = _write_most_confused(
            report / f"{prefix}most_confused.csv", report / f"{prefix}most_confused.png",
            most_confused(confusion, class_names))
        # The full matrix is too big for the JSON record above this many classes.
        files["confusion_npy"] = report / f"{prefix}confusion.npy"
        with atomic_path(files["confusion_npy"]) as tmp:
            np.save(tmp, confusion)
    files["json"] = report / f"{prefix}{rundir.PREDICTIONS}"
    result = {
        "checkpoint": checkpoint, "examples": examples, "accuracy": accuracy, "top5": top5,
        "loss": loss, "top_k": collector.k, "class_names": class_names,
        "files": {label: path.relative_to(run_dir).as_posix() for label, path in files.items()},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    record = dict(result, confusion=confusion.tolist() if num_classes <= MAX_CONFUSION_CLASSES else None)
    atomic_write_text(files["json"], json.dumps(record, indent=1) + "\n")
    result["confusion"] = confusion
    return result
