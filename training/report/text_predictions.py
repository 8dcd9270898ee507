"""The text task's prediction report: accuracy and confusion over a split, and the most
confident correct and incorrect texts as a readable HTML page (texts truncated and escaped)."""
from __future__ import annotations

import datetime
import html
import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from core import rundir
from core.fsutil import atomic_write_text
from training.report.predictions import _write_confusion_png, probabilities

SHOWN = 10  # texts per list
MAX_CHARS = 300  # a text longer than this is cut, with an ellipsis


def _short(text: str) -> str:
    return text if len(text) <= MAX_CHARS else text[:MAX_CHARS - 1] + "…"


def _rows(title: str, items: list[dict]) -> str:
    if not items:
        return f"<h2>{html.escape(title)}</h2><p>none</p>\n"
    body = "".join(f"<tr><td>{it['probability']:.3f}</td><td>{html.escape(it['predicted'])}</td>"
                   f"<td>{html.escape(it['true'])}</td><td>{html.escape(it['text'])}</td></tr>\n" for it in items)
    return (f"<h2>{html.escape(title)}</h2>\n<table><tr><th>probability</th><th>predicted</th><th>true</th>"
            f"<th>text</th></tr>\n{body}</table>\n")


def write_text_report(run_dir: str | Path, classify, dataset: Iterable, class_names: list[str],
                      *, prefix: str = "", checkpoint: str = "") -> dict[str, Any]:
    """Runs `classify` (raw texts to the model's outputs: training.inference.text_classifier) over
    `dataset` ((texts [B], labels [B]) batches) and writes under report/:
    <prefix>texts.html (most confident correct and incorrect texts), <prefix>confusion.png and
    <prefix>predictions.json (the same record the image report writes, which summary.json reads).

    Returns:
        accuracy (None without examples), examples, confusion, class_names, checkpoint, files.
    """
    run_dir = Path(run_dir)
    report = run_dir / rundir.REPORT
    n = len(class_names)
    confusion = np.zeros((n, n), dtype=np.int64)
    correct: list[dict] = []
    wrong: list[dict] = []
    loss_sum = 0.0
    k = min(5, n)
    top_k_hits = 0
    for texts, labels in dataset:
        labels = np.asarray(labels).reshape(-1).astype(np.int64)
        probs = probabilities(np.asarray(classify(texts)))
        pred = probs.argmax(axis=1)
        np.add.at(confusion, (labels, pred), 1)
        top_k_hits += int((np.argsort(-probs, axis=1)[:, :k] == labels[:, None]).any(axis=1).sum())
        loss_sum += float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)).sum())
        for text, true, guess, p in zip(np.asarray(texts), labels, pred, probs.max(axis=1)):
            item = {"probability": float(p), "predicted": class_names[guess], "true": class_names[true],
                    "text": _short(text.decode("utf-8", "replace"))}
            (correct if guess == true else wrong).append(item)
        correct = sorted(correct, key=lambda it: -it["probability"])[:SHOWN]
        wrong = sorted(wrong, key=lambda it: -it["probability"])[:SHOWN]
    examples = int(confusion.sum())
    accuracy = float(np.trace(confusion) / examples) if examples else None
    page = (f"<!doctype html><meta charset='utf-8'><title>Predictions</title>\n"
            f"<p>{examples} texts, accuracy {accuracy or 0:.2%}, checkpoint {html.escape(checkpoint)}</p>\n"
            + _rows("Most confident correct predictions", correct)
            + _rows("Most confident mistakes", wrong))
    files = {"texts": report / f"{prefix}texts.html",
             "confusion": _write_confusion_png(report / f"{prefix}confusion.png", confusion, class_names,
                                               accuracy or 0.0),
             "json": report / f"{prefix}predictions.json"}
    atomic_write_text(files["texts"], page)
    result = {"checkpoint": checkpoint, "examples": examples, "accuracy": accuracy, "top_k": k,
              "top5": top_k_hits / examples if examples else None,
              "loss": loss_sum / examples if examples else None, "class_names": class_names,
              "most_confident_correct": correct, "most_confident_incorrect": wrong,
              "files": {label: path.relative_to(run_dir).as_posix() for label, path in files.items()},
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    atomic_write_text(files["json"], json.dumps(dict(result, confusion=confusion.tolist()), indent=1) + "\n")
    return dict(result, confusion=confusion)
