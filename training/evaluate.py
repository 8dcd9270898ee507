"""Evaluate a run's checkpoint, or predict the classes of a folder of images, where this runs.

    python -m training.evaluate eval --run-dir R [--checkpoint best|final|latest|PATH] [--split val]
    python -m training.evaluate predict --run-dir R --images DIR --out preds.csv [--top-k 5]

The compute-node entry points of `launch eval` and `launch predict`, which submit them as SLURM
jobs (launcher/commands.py); run by hand they do the work on this machine and submit nothing.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable

from core import config as config_lib
from core.errors import UserError
from core.fsutil import atomic_write_text
from core.rundir import RunDir
from training.data import DataError, as_data_error
from training.inference import EvaluateError, checkpoint_path, load_config, load_model  # noqa: F401 (also this module's API)
from training.predict_text import evaluate_text

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
NAMED_CHECKPOINTS = RunDir.NAMED_CHECKPOINTS


def class_names(run_dir: Path, cfg: config_lib.Config) -> list[str]:
    """The classes the model was trained on (model_spec.json), else the data set's."""
    classes = RunDir(run_dir).read_model_spec().get("classes")
    if classes:
        return [str(c) for c in classes]
    from training.data.pipeline import dataset_info  # defers TensorFlow

    return list(dataset_info(cfg.data).class_names)


def default_batch_size(cfg: config_lib.Config) -> int:
    """The per-replica training batch: it fit one device during training, with gradients."""
    replicas = max(cfg.slurm.nodes, 1) * max(cfg.slurm.gpus_per_node, 1)
    return max(1, cfg.data.batch_size // replicas)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def report(run_dir: str | Path, checkpoint: str, dataset: Iterable, names: list[str],
           max_batches: int | None = None, prefix: str = "", model=None) -> tuple[Path, dict[str, Any]]:
    """Loads a checkpoint of the run (unless `model` is that checkpoint, loaded already) and
    writes its prediction report under report/.

    The one evaluation of an image checkpoint: the chief's end-of-training report (no prefix,
    training/tasks/image.py) and `launch eval` (prefix eval-<split>-) both call it.

    Returns:
        (the checkpoint file, write_prediction_report's record).
    """
    from training.report.predictions import write_prediction_report  # defers NumPy

    path = checkpoint_path(Path(run_dir), checkpoint)
    return path, write_prediction_report(run_dir, model or load_model(path), dataset, names, max_batches,
                                         prefix=prefix, checkpoint=checkpoint)


def evaluate(run_dir: str | Path, checkpoint: str = "best", split: str = "val", batch_size: int = 0,
             max_batches: int | None = None, dataset: Iterable | None = None) -> dict[str, Any]:
    """Recomputes accuracy and top-5 of a checkpoint and writes report/eval-<split>.json.

    The grids, confusion plot and full record go to report/eval-<split>-*.{png,json}, so the
    end-of-training report (from the best checkpoint) is not overwritten.

    Args:
        run_dir: the run directory.
        checkpoint: best | final | latest | path to an HDF5 model.
        split: "val" or "train", read in evaluation mode (centre crop, one pass).
        batch_size: images per batch; 0 = the run's per-replica training batch.
        max_batches: stop after this many batches (a quick look); None = the whole split.
        dataset: batches of (images, labels) to use instead of the run's data pipeline.

    Returns:
        The eval-<split>.json record: checkpoint, split, examples, accuracy, top5, loss, files.
    """
    run_dir = Path(run_dir)
    cfg = load_config(run_dir)
    path = checkpoint_path(run_dir, checkpoint)  # a missing checkpoint is named before the data is read
    if dataset is None and cfg.task == "image":
        from training.data.pipeline import build_dataset  # defers TensorFlow

        dataset = build_dataset(cfg.data, split, training=False,
                                batch_size=batch_size or default_batch_size(cfg), input_context=None,
                                seed=cfg.train.seed)
    if cfg.task != "image":  # the run's own tokenizer and the texts' report (training/predict_text.py)

        result = evaluate_text(run_dir, checkpoint, split, batch_size or default_batch_size(cfg), max_batches)
    else:
        path, result = report(run_dir, checkpoint, dataset, class_names(run_dir, cfg), max_batches,
                              prefix=f"eval-{split}-")
    if not result["examples"]:
        raise EvaluateError(f"the {split} split gave no images; check data.data_dir and data.val_split "
                            f"in {RunDir(run_dir).config}")
    record = {
        "checkpoint": checkpoint,
        "checkpoint_path": str(path.relative_to(run_dir) if path.is_relative_to(run_dir) else path),
        "split": split, "examples": result["examples"], "accuracy": result["accuracy"],
        "top5": result["top5"], "top_k": result["top_k"], "loss": result["loss"],
        "complete": max_batches is None, "files": result["files"], "created": _now(),
    }
    atomic_write_text(RunDir(run_dir).eval_record(split), json.dumps(record, indent=1) + "\n")
    return record


def find_images(images_dir: Path) -> list[Path]:
    """Image files under `images_dir`, recursively, sorted; hidden files and folders skipped."""
    found = []
    for root, dirs, files in os.walk(images_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root) / f for f in sorted(files)
                  if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith(".")]
    return found


def _image_dataset(paths: list[Path], data_cfg: config_lib.DataConfig, batch_size: int):
    """Batches of (index, image) with the evaluation crop and resize of the training pipeline."""
    from training.data import pipeline  # defers TensorFlow
    from training.keras_compat import tf  # defers TensorFlow

    def load(index, path):
        # The pipeline's own eval transform, so predictions see what validation saw.
        no_seed = tf.constant([0, 0], tf.int64)  # evaluation crops are not random
        image = pipeline.decode_crop_resize(tf.io.read_file(path), data_cfg, False, no_seed)
        return index, image

    ds = tf.data.Dataset.from_tensor_slices((list(range(len(paths))), [str(p) for p in paths]))
    # An unreadable file is skipped, not fatal; its index goes missing and is reported.
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def predict(run_dir: str | Path, images_dir: str | Path, out: str | Path, checkpoint: str = "best",
            top_k: int = 5, batch_size: int = 32) -> dict[str, Any]:
    """Writes a CSV row per image: path, predicted_class, confidence, then ranks 2..top_k.

    Returns:
        {"images": rows written, "skipped": [unreadable paths], "out": the CSV path}.
    """
    import numpy as np

    from training.report.predictions import probabilities  # defers NumPy

    run_dir, images_dir = Path(run_dir), Path(images_dir)
    cfg = load_config(run_dir)
    if not images_dir.is_dir():
        raise EvaluateError(f"--images {images_dir} is not a folder")
    paths = find_images(images_dir)
    if not paths:
        raise EvaluateError(f"no {'/'.join(IMAGE_SUFFIXES)} files under {images_dir}")
    names = class_names(run_dir, cfg)
    model = load_model(checkpoint_path(run_dir, checkpoint))
    k = max(1, min(top_k, len(names)))
    header = ["path", "predicted_class", "confidence"]
    for rank in range(2, k + 1):
        header += [f"top{rank}_class", f"top{rank}_confidence"]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    done = set()
    for indices, images in _image_dataset(paths, cfg.data, batch_size):
        probs = probabilities(np.asarray(model.predict_on_batch(images)))
        for index, row in zip(indices.numpy(), probs):
            order = np.argsort(-row)[:k]
            cells = [str(paths[index])]
            for cls in order:
                cells += [names[cls], f"{row[cls]:.6f}"]
            writer.writerow(cells)
            done.add(int(index))
    atomic_write_text(out, buf.getvalue())
    skipped = [str(p) for i, p in enumerate(paths) if i not in done]
    return {"images": len(done), "skipped": skipped, "out": str(out)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--run-dir", type=Path, required=True, help="the run directory")
    common.add_argument("--checkpoint", default="best", help="best | final | latest | path to an .h5 model")
    ev = sub.add_parser("eval", parents=[common], help="accuracy and top-5 of a checkpoint on a split")
    ev.add_argument("--split", default="val", choices=("val", "train"))
    ev.add_argument("--batch-size", type=int, default=0, help="0 = the run's per-replica batch")
    ev.add_argument("--max-batches", type=int, default=None, help="stop after N batches")
    pr = sub.add_parser("predict", parents=[common], help="classes of a folder of images, as CSV")
    pr.add_argument("--images", type=Path, required=True, help="folder searched recursively for jpg/png")
    pr.add_argument("--out", type=Path, required=True, help="CSV to write")
    pr.add_argument("--top-k", type=int, default=5)
    pr.add_argument("--batch-size", type=int, default=32)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "eval":
            rec = evaluate(args.run_dir, args.checkpoint, args.split, args.batch_size, args.max_batches)
            print(f"{args.checkpoint} ({rec['checkpoint_path']}) on {args.split}: "
                  f"accuracy {rec['accuracy']:.4f}  top-{rec['top_k']} {rec['top5']:.4f}  "
                  f"loss {rec['loss']:.4f}  ({rec['examples']} images)")
            print(f"wrote {RunDir(args.run_dir).eval_record(args.split)}")
        else:
            res = predict(args.run_dir, args.images, args.out, args.checkpoint, args.top_k, args.batch_size)
            for path in res["skipped"]:
                print(f"skipped unreadable image: {path}", file=sys.stderr)
            print(f"wrote {res['images']} predictions to {res['out']}")
    except (UserError, DataError) as err:
        print(f"evaluate: {err}", file=sys.stderr)
        return 2
    except Exception as caught:
        err = as_data_error(caught)  # a damaged shard found while evaluating names itself
        if not isinstance(err, DataError):
            raise
        print(f"evaluate: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
