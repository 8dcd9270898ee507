"""Evaluate and predict for text runs: the run's saved tokenizer and model, texts in, labels out.

    python -m training.predict_text --run-dir R --text "a tedious, overlong mess" [--text ...]
    python -m training.predict_text --run-dir R --file reviews.txt --out preds.csv   # one text a line
    python -m training.predict_text --run-dir R --file reviews.csv [--text-column text]

Writes a CSV row per text: text, predicted_class, confidence, then the other classes' probabilities;
to stdout when --out is not given.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

from core import rundir
from core.fsutil import atomic_write_text
from training.data import DataError
from training.data.text_sources import decode
from training.inference import EvaluateError, checkpoint_path, load_config, load_model, text_classifier


def _spec(run_dir: Path) -> dict:
    path = run_dir / rundir.MODEL / rundir.MODEL_SPEC
    try:
        spec = json.loads(path.read_text())
    except (OSError, ValueError):
        raise DataError(f"{path} is missing or damaged; pass --run-dir of a text run that has started") from None
    if spec.get("task") != "text":
        raise DataError(f"{run_dir} is not a text run (model_spec.json task {spec.get('task')!r}); "
                        "use python -m training.evaluate predict --images for image runs")
    return spec


def load_text_model(run_dir: str | Path, checkpoint: str = "best"):
    """(model, tokenizer layer, class names) of a text run."""
    from training import tokenizer  # defers TensorFlow

    run_dir = Path(run_dir)
    spec = _spec(run_dir)
    layer, _ = tokenizer.load(tokenizer.tokenizer_path(run_dir))
    return load_model(checkpoint_path(run_dir, checkpoint)), layer, [str(c) for c in spec["classes"]]


def predict_texts(run_dir: str | Path, texts: list[str], checkpoint: str = "best",
                  batch_size: int = 256) -> list[dict[str, Any]]:
    """One {"text", "label", "probability", "probabilities": {class: p}} per text, in order."""
    import numpy as np

    from training.keras_compat import tf  # defers TensorFlow
    from training.report.predictions import probabilities  # defers NumPy

    model, layer, names = load_text_model(run_dir, checkpoint)
    classify = text_classifier(model, layer)
    rows = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        probs = probabilities(np.asarray(classify(tf.constant(chunk))))
        for text, p in zip(chunk, probs):
            best = int(p.argmax())
            rows.append({"text": text, "label": names[best], "probability": float(p[best]),
                         "probabilities": {n: float(v) for n, v in zip(names, p)}})
    return rows


def evaluate_text(run_dir: str | Path, checkpoint: str = "best", split: str = "val", batch_size: int = 256,
                  max_batches: int | None = None) -> dict:
    """Accuracy of a checkpoint on the run's split; writes report/eval-<split>-* like the image eval."""
    from training.data.text_pipeline import text_dataset  # defers TensorFlow
    from training.report.text_predictions import write_text_report  # defers NumPy

    run_dir = Path(run_dir)
    model, layer, names = load_text_model(run_dir, checkpoint)
    data = text_dataset(load_config(run_dir).data, split, False).batch(batch_size)
    if max_batches is not None:
        data = data.take(max_batches)
    return write_text_report(run_dir, text_classifier(model, layer), data, names, prefix=f"eval-{split}-",
                             checkpoint=checkpoint)


def read_texts(path: str | Path, text_column: str = "text") -> list[str]:
    """Texts of a file: a CSV's `text_column`, else one text per non-empty line (UTF-8, BOM allowed)."""
    path = Path(path)
    try:
        text = decode(path.read_bytes())
    except OSError as err:
        raise DataError(f"cannot read {path} ({err.strerror or err})") from None
    if text is None:
        raise DataError(f"{path} is not UTF-8 text; save it as UTF-8")
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if text_column not in (reader.fieldnames or []):
            raise DataError(f"{path} has no column {text_column!r} (its columns: {', '.join(reader.fieldnames or [])}); "
                            "pass --text-column")
        return [row[text_column] for row in reader if (row[text_column] or "").strip()]
    return [line for line in text.splitlines() if line.strip()]


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    names = list(rows[0]["probabilities"]) if rows else []
    writer.writerow(["text", "predicted_class", "confidence", *[f"p_{n}" for n in names]])
    for row in rows:
        writer.writerow([row["text"], row["label"], f"{row['probability']:.6f}",
                         *[f"{row['probabilities'][n]:.6f}" for n in names]])
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.predict_text", description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--checkpoint", default="best", help="best | final | latest | path to an .h5 model")
    parser.add_argument("--text", action="append", default=[], help="a text to label; repeat for several")
    parser.add_argument("--file", type=Path, help="a text file (one text a line) or a CSV")
    parser.add_argument("--text-column", default="text", help="the CSV column holding the texts")
    parser.add_argument("--out", type=Path, help="CSV to write (default: stdout)")
    args = parser.parse_args(argv)

    try:
        texts = list(args.text) + (read_texts(args.file, args.text_column) if args.file else [])
        if not texts:
            raise DataError("no texts given; pass --text \"...\" or --file FILE")
        rows = predict_texts(args.run_dir, texts, args.checkpoint)
    except (DataError, EvaluateError) as err:
        print(f"predict: {err}", file=sys.stderr)
        return 2
    if args.out:
        atomic_write_text(args.out, to_csv(rows))
        print(f"wrote {len(rows)} predictions to {args.out}")
    else:
        sys.stdout.write(to_csv(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
