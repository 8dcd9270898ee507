"""Evaluate a run's checkpoint, or predict the classes of a folder of images.

    python -m training.evaluate eval --run-dir R [--checkpoint best|final|latest|PATH] [--split val]
    python -m training.evaluate predict --run-dir R --images DIR --out preds.csv [--top-k 5]

Both run here, or on a GPU node with `--submit` (one task, one GPU, the run's partition, account
and QoS; logs in RUN_DIR/logs/). TensorFlow is imported only when work is done here, so
`--submit` answers at once on a login node.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import io
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable

import yaml

from launcher import config as config_lib
from launcher import rundir
from launcher.fsutil import atomic_write_text
from launcher.render import gpu_request
from training.data import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
NAMED_CHECKPOINTS = ("best", "final", "latest")


class EvaluateError(ValueError):
    """A user-facing problem; the message is one line: what, where, what to do."""


def load_config(run_dir: Path) -> config_lib.Config:
    path = run_dir / rundir.CONFIG
    if not path.is_file():
        raise EvaluateError(f"{run_dir} is not a run directory (no {rundir.CONFIG}); pass --run-dir of a run")
    return config_lib.from_dict(yaml.safe_load(path.read_text()) or {}, str(path))


def checkpoint_path(run_dir: Path, checkpoint: str) -> Path:
    """best -> checkpoints/best.h5, final -> model/final.h5, latest -> the file latest.json names,
    anything else is a path to an HDF5 model."""
    if checkpoint == "best":
        path = run_dir / rundir.CHECKPOINTS / "best.h5"
    elif checkpoint == "final":
        path = run_dir / rundir.MODEL / "final.h5"
    elif checkpoint == "latest":
        record = run_dir / rundir.CHECKPOINTS / "latest.json"
        if not record.is_file():
            raise EvaluateError(f"{record} does not exist: the run has saved no resumable checkpoint yet")
        path = record.parent / json.loads(record.read_text())["weights"]
    else:
        path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise EvaluateError(f"checkpoint {checkpoint!r}: {path} does not exist; choose one of "
                            f"{', '.join(NAMED_CHECKPOINTS)} or an existing .h5 file")
    return path


def load_model(path: Path):
    """A tf-keras model from an HDF5 file, uncompiled (metrics are computed here, not by Keras)."""
    from training.keras_compat import keras

    try:
        from training import models
        custom = getattr(models, "custom_objects", dict)()
    except ImportError:  # a model of only built-in layers still loads
        custom = {}
    return keras.models.load_model(path, custom_objects=custom, compile=False)


def class_names(run_dir: Path, cfg: config_lib.Config) -> list[str]:
    """The classes the model was trained on (model_spec.json), else the data set's."""
    spec = run_dir / rundir.MODEL / "model_spec.json"
    if spec.is_file():
        classes = json.loads(spec.read_text()).get("classes")
        if classes:
            return [str(c) for c in classes]
    from training.data.pipeline import dataset_info

    return list(dataset_info(cfg.data).class_names)


def default_batch_size(cfg: config_lib.Config) -> int:
    """The per-replica training batch: it fit one device during training, with gradients."""
    replicas = max(cfg.slurm.nodes, 1) * max(cfg.slurm.gpus_per_node, 1)
    return max(1, cfg.data.batch_size // replicas)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


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
    from training.report.predictions import write_prediction_report

    run_dir = Path(run_dir)
    cfg = load_config(run_dir)
    path = checkpoint_path(run_dir, checkpoint)
    if dataset is None and cfg.task == "image":
        from training.data.pipeline import build_dataset

        dataset = build_dataset(cfg.data, split, training=False,
                                batch_size=batch_size or default_batch_size(cfg), input_context=None,
                                seed=cfg.train.seed)
    if cfg.task != "image":  # the run's own tokenizer and the texts' report (training/predict_text.py)
        from training.predict_text import evaluate_text

        result = evaluate_text(run_dir, checkpoint, split, batch_size or default_batch_size(cfg), max_batches)
    else:
        result = write_prediction_report(run_dir, load_model(path), dataset, class_names(run_dir, cfg),
                                         max_batches, prefix=f"eval-{split}-", checkpoint=checkpoint)
    if not result["examples"]:
        raise EvaluateError(f"the {split} split gave no images; check data.data_dir and data.val_split "
                            f"in {run_dir / rundir.CONFIG}")
    record = {
        "checkpoint": checkpoint,
        "checkpoint_path": str(path.relative_to(run_dir) if path.is_relative_to(run_dir) else path),
        "split": split, "examples": result["examples"], "accuracy": result["accuracy"],
        "top5": result["top5"], "top_k": result["top_k"], "loss": result["loss"],
        "complete": max_batches is None, "files": result["files"], "created": _now(),
    }
    atomic_write_text(run_dir / rundir.REPORT / f"eval-{split}.json", json.dumps(record, indent=1) + "\n")
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
    from training.data import pipeline
    from training.keras_compat import tf

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

    from training.report.predictions import probabilities

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


def sbatch_command(slurm: config_lib.SlurmConfig, *, job_name: str, output: Path, wrap: str, nodes: int = 1,
                   gpus_per_node: int = 1, time_min: int | None = None, wait: bool = False) -> list[str]:
    """The sbatch argument list for `wrap` (shell text) with the site's partition, account, QoS
    and GPU request style taken from `slurm`. --parsable makes the job id the whole output.

    `output` is the log file; its name may use sbatch patterns such as %j.
    """
    # A type without a count is no request at all.
    gpu_slurm = dataclasses.replace(slurm, gpus_per_node=gpus_per_node,
                                    gpu_type=slurm.gpu_type if gpus_per_node else "")
    # sbatch expands %j etc. in --output: the folder's own % signs are doubled to stay literal,
    # the file name keeps its patterns.
    output = Path(output)
    output_arg = f"{str(output.parent).replace('%', '%%')}/{output.name}"
    args = ["sbatch", "--parsable", f"--job-name={job_name}", f"--nodes={nodes}", "--ntasks-per-node=1",
            f"--cpus-per-task={slurm.cpus_per_task}", f"--time={time_min or slurm.time_min}",
            f"--output={output_arg}"]
    args += [f"--{key}={value}" for key, value in sorted(gpu_request(gpu_slurm).items())]
    args += [f"--{key}={getattr(slurm, key)}" for key in ("partition", "account", "qos", "mem")
             if getattr(slurm, key)]
    if wait:
        args.append("--wait")
    return [*args, "--wrap", wrap]


def submit(run_dir: Path, job_command: list[str], job_name: str) -> str:
    """Submits `job_command` (an argument list) as a one-GPU job; returns the job id."""
    cfg = load_config(run_dir)
    lines = [*cfg.slurm.setup, shlex.join(job_command)]  # setup lines are the user's own shell
    argv = sbatch_command(cfg.slurm, job_name=job_name, output=run_dir / rundir.LOGS / f"{job_name}-%j.out",
                          wrap="\n".join(lines), gpus_per_node=1 if cfg.slurm.gpus_per_node else 0,
                          time_min=min(cfg.slurm.time_min, 60))
    (run_dir / rundir.LOGS).mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    except (FileNotFoundError, subprocess.TimeoutExpired) as err:
        raise EvaluateError(f"could not run sbatch ({err}); --submit needs a SLURM login node") from None
    if done.returncode != 0:
        said = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise EvaluateError(f"sbatch refused the job: {said}")
    return done.stdout.strip().split(";")[0]


def _job_command(args: argparse.Namespace) -> list[str]:
    """This same command with absolute paths and without --submit, for the batch job."""
    cfg = load_config(args.run_dir)
    python = cfg.runtime.python or sys.executable
    cmd = [python, "-m", "training.evaluate", args.command, "--run-dir", str(args.run_dir.resolve())]
    checkpoint = args.checkpoint
    if checkpoint not in NAMED_CHECKPOINTS:
        checkpoint = str(Path(checkpoint).resolve())
    cmd += ["--checkpoint", checkpoint]
    if args.command == "eval":
        cmd += ["--split", args.split, "--batch-size", str(args.batch_size)]
        if args.max_batches is not None:
            cmd += ["--max-batches", str(args.max_batches)]
    else:
        cmd += ["--images", str(args.images.resolve()), "--out", str(args.out.resolve()),
                "--top-k", str(args.top_k)]
    return cmd


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--run-dir", type=Path, required=True, help="the run directory")
    common.add_argument("--checkpoint", default="best", help="best | final | latest | path to an .h5 model")
    common.add_argument("--submit", action="store_true", help="run as a one-GPU SLURM job; prints the job id")
    ev = sub.add_parser("eval", parents=[common], help="accuracy and top-5 of a checkpoint on a split")
    ev.add_argument("--split", default="val", choices=("val", "train"))
    ev.add_argument("--batch-size", type=int, default=0, help="0 = the run's per-replica batch")
    ev.add_argument("--max-batches", type=int, default=None, help="stop after N batches")
    pr = sub.add_parser("predict", parents=[common], help="classes of a folder of images, as CSV")
    pr.add_argument("--images", type=Path, required=True, help="folder searched recursively for jpg/png")
    pr.add_argument("--out", type=Path, required=True, help="CSV to write")
    pr.add_argument("--top-k", type=int, default=5)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.submit:
            name = f"{args.command}-{args.run_dir.resolve().name}"
            job_id = submit(args.run_dir.resolve(), _job_command(args), name)
            # The id alone on stdout, so scripts can capture it; the hint goes to stderr.
            print(f"submitted job {job_id}; log: {args.run_dir / rundir.LOGS / f'{name}-{job_id}.out'}",
                  file=sys.stderr)
            print(job_id)
            return 0
        if args.command == "eval":
            rec = evaluate(args.run_dir, args.checkpoint, args.split, args.batch_size, args.max_batches)
            print(f"{args.checkpoint} ({rec['checkpoint_path']}) on {args.split}: "
                  f"accuracy {rec['accuracy']:.4f}  top-{rec['top_k']} {rec['top5']:.4f}  "
                  f"loss {rec['loss']:.4f}  ({rec['examples']} images)")
            print(f"wrote {args.run_dir / rundir.REPORT / f'eval-{args.split}.json'}")
        else:
            res = predict(args.run_dir, args.images, args.out, args.checkpoint, args.top_k)
            for path in res["skipped"]:
                print(f"skipped unreadable image: {path}", file=sys.stderr)
            print(f"wrote {res['images']} predictions to {res['out']}")
    except (EvaluateError, config_lib.ConfigError, DataError) as err:
        print(f"evaluate: {err}", file=sys.stderr)
        return 2
    except Exception as caught:
        from training.data import as_data_error

        err = as_data_error(caught)  # a damaged shard found while evaluating names itself
        if not isinstance(err, DataError):
            raise
        print(f"evaluate: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
