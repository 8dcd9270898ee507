"""report/summary.json: one machine-readable record of what a run did and where its outputs are.

Most fields are derived from the run directory itself (history.csv, config.yaml,
model/model_spec.json, report/predictions.json, files present), so the chief passes only what
it alone knows: wall time, node and GPU counts, job id. No TensorFlow here.
"""
from __future__ import annotations

import datetime
import json
import statistics
from pathlib import Path
from typing import Any

from core import config as config_lib
from core import provenance, rundir
from core.fsutil import atomic_write_text
from training.report.curves import PLOTS, read_history

SUMMARY = rundir.SUMMARY
PREDICTIONS_JSON = rundir.PREDICTIONS  # written by report.predictions, read here
MODEL_SPEC = rundir.MODEL_SPEC
BEST_H5 = f"{rundir.CHECKPOINTS}/{rundir.BEST_CHECKPOINT}"
FINAL_H5 = f"{rundir.MODEL}/{rundir.FINAL_MODEL}"

# Every key summary.json always holds, so readers never need .get(); None means "not known yet".
FIELDS = (
    "task",  # always "image_classification"
    "model",  # architecture name
    "num_classes",
    "classes",  # {"0": "name", ...}: output index -> class name
    "best_epoch",  # epoch with the lowest val_loss: the one saved as checkpoints/best.h5
    "best_val_loss", "best_val_accuracy", "best_val_top5",  # at best_epoch
    "max_val_accuracy",  # highest val accuracy of any epoch (may be another epoch than best)
    "final_val_loss", "final_val_accuracy", "final_val_top5",  # at the last finished epoch
    "final_train_loss", "final_train_accuracy",
    "eval",  # {"checkpoint", "accuracy", "top5", "loss", "examples"} from report/predictions.json
    "target_accuracy", "target_reached",  # train.target_accuracy and whether eval/val reached it
    "epochs_done", "epochs_total",
    "images_per_sec",  # mean of the per-epoch training throughput, all workers together
    "train_time_s",  # sum of epoch times (excludes start-up, evaluation passes outside epochs)
    "wall_time_s",  # job start to end as measured by the chief (passed in)
    "nodes", "gpus",  # actually used (passed in by the chief)
    "backend",  # mirrored | multiworker | horovod
    "job_id",
    "plots",  # {"loss": "report/loss.png", ...}, paths relative to the run directory
    "predictions",  # {"correct": ..., "incorrect": ..., "confusion": ...}, relative paths
    "models",  # {"best": "checkpoints/best.h5", "final": "model/final.h5"}, relative paths
    "provenance",  # logs/provenance.json: versions, git commits, nodes and GPUs (core/provenance.py)
    "created", "updated",  # ISO 8601, UTC; created is kept from the first write
)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, or {} when the file is absent or not a valid object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_config(run_dir: Path) -> config_lib.Config | None:
    """The run's config, or None: a summary written at the end of training must not fail."""
    try:
        return config_lib.load_run_config(run_dir)
    except (OSError, ValueError):
        return None


def _present(run_dir: Path, mapping: dict[str, str]) -> dict[str, str]:
    """The entries of {label: relative path} whose file exists."""
    return {label: rel for label, rel in mapping.items() if (run_dir / rel).is_file()}


def _history_fields(history: list[dict[str, float | None]]) -> dict[str, Any]:
    if not history:
        return {}
    last = history[-1]
    with_val_loss = [row for row in history if row.get("val_loss") is not None]
    best = min(with_val_loss, key=lambda row: row["val_loss"]) if with_val_loss else {}
    val_accs = [row["val_accuracy"] for row in history if row.get("val_accuracy") is not None]
    speeds = [row["images_per_sec"] for row in history if row.get("images_per_sec") is not None]
    times = [row["epoch_time_s"] for row in history if row.get("epoch_time_s") is not None]
    return {
        "best_epoch": int(best["epoch"]) if best else None,
        "best_val_loss": best.get("val_loss"),
        "best_val_accuracy": best.get("val_accuracy"),
        "best_val_top5": best.get("val_top5"),
        "max_val_accuracy": max(val_accs) if val_accs else None,
        "final_val_loss": last.get("val_loss"),
        "final_val_accuracy": last.get("val_accuracy"),
        "final_val_top5": last.get("val_top5"),
        "final_train_loss": last.get("loss"),
        "final_train_accuracy": last.get("accuracy"),
        "epochs_done": int(last["epoch"]),
        "images_per_sec": statistics.fmean(speeds) if speeds else None,
        "train_time_s": sum(times) if times else None,
    }


def derive(run_dir: str | Path) -> dict[str, Any]:
    """Every summary field that the run directory alone determines; unknown ones are None."""
    run_dir = Path(run_dir)
    report = rundir.REPORT
    cfg = _read_config(run_dir)
    spec = _read_json(run_dir / rundir.MODEL / MODEL_SPEC)
    status = _read_json(run_dir / rundir.STATUS)
    preds = _read_json(run_dir / report / PREDICTIONS_JSON)
    out: dict[str, Any] = dict.fromkeys(FIELDS)
    out["task"] = "image_classification"
    out.update(_history_fields(read_history(run_dir)))
    out["model"] = spec.get("architecture") or (cfg.model.name if cfg else None)
    classes = spec.get("classes") or preds.get("class_names")
    if classes:
        out["classes"] = {str(i): name for i, name in enumerate(classes)}
        out["num_classes"] = len(classes)
    else:
        out["num_classes"] = spec.get("num_classes")
    if cfg:
        out["epochs_total"] = cfg.train.epochs
        out["backend"] = cfg.runtime.backend
        out["target_accuracy"] = cfg.train.target_accuracy or None
    out["job_id"] = status.get("job_id")
    if preds.get("accuracy") is not None:
        out["eval"] = {key: preds.get(key) for key in ("checkpoint", "accuracy", "top5", "loss", "examples")}
    reached = (out["eval"] or {}).get("accuracy", out["max_val_accuracy"])
    if out["target_accuracy"] and reached is not None:
        out["target_reached"] = reached >= out["target_accuracy"]
    out["plots"] = _present(run_dir, {Path(p).stem: f"{report}/{p}" for p in PLOTS}) or None
    out["predictions"] = _present(run_dir, preds.get("files") or {}) or None
    models = {"best": BEST_H5, "final": FINAL_H5}
    latest = _read_json(run_dir / rundir.CHECKPOINTS / rundir.LATEST).get("weights")
    if latest:  # latest.json names the newest resumable checkpoint file
        models["latest"] = f"{rundir.CHECKPOINTS}/{latest}"
    out["models"] = _present(run_dir, models) or None
    out["provenance"] = provenance.read(run_dir) or None
    return out


def write_summary(run_dir: str | Path, **fields: Any) -> dict[str, Any]:
    """Merges derived and given fields into report/summary.json (atomically) and returns it.

    Later writes win, in this order: the previous summary.json, values derived from the run
    directory (unknown ones do not erase earlier values), then `fields` as given. `created` is
    kept from the first write. Only the chief calls this.

    Args:
        run_dir: the run directory.
        **fields: values only the caller knows, typically wall_time_s, nodes, gpus, job_id;
            `classes` may be a list of names. Names outside FIELDS are stored as well.
    """
    run_dir = Path(run_dir)
    path = run_dir / rundir.REPORT / SUMMARY
    summary = dict.fromkeys(FIELDS)
    summary.update(_read_json(path))
    summary.update({k: v for k, v in derive(run_dir).items() if v is not None})
    if isinstance(fields.get("classes"), (list, tuple)):
        fields["classes"] = {str(i): name for i, name in enumerate(fields["classes"])}
        fields.setdefault("num_classes", len(fields["classes"]))
    summary.update(fields)
    summary["created"] = summary.get("created") or _now()
    summary["updated"] = _now()
    atomic_write_text(path, json.dumps(summary, indent=2, sort_keys=False) + "\n")
    return summary
