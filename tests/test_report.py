"""Reports and evaluation on a small trained run: curves, grids, confusion, summary, eval, predict.

One tiny model is trained once per module on colour-coded images whose classes have hostile
names (quotes, `;`), and the run directory holds a space and a quote in its own name.
"""
from __future__ import annotations

import csv
import json
import os
import re
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core import provenance, rundir
from core.config import Config, dump
from core.fsutil import atomic_write_text
from training import evaluate
from training.report import write_curves, write_prediction_report, write_summary
from training.report.summary import FIELDS

pytestmark = pytest.mark.xdist_group("report-runs")  # one worker: its module fixture once

CLASSES = ["blue \"sky\"", "green; leaf", "red 'car'"]  # sorted, as the folder pipeline orders them
COLOURS = {0: (20, 40, 220), 1: (30, 200, 40), 2: (210, 30, 30)}
SIZE = 16
VAL_PER_CLASS = 6
MISLABELLED = 2  # red images filed under green/ in val: the model must get these wrong
HISTORY_HEADER = "epoch,loss,accuracy,top5,val_loss,val_accuracy,val_top5,lr,images_per_sec,epoch_time_s\n"


def _image(cls: int, rng: np.random.Generator) -> np.ndarray:
    noise = rng.integers(-25, 26, (SIZE, SIZE, 3))
    return np.clip(np.array(COLOURS[cls]) + noise, 0, 255).astype(np.uint8)


def _write_split(root: Path, per_class: int, rng, mislabelled: int = 0) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for cls, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            image = _image(cls, rng)
            Image.fromarray(image).save(root / name / f"{i:03d}.png")
            images.append(image)
            labels.append(cls)
    for i in range(mislabelled):
        Image.fromarray(_image(2, rng)).save(root / CLASSES[1] / f"wrong-{i}.png")
    return np.stack(images).astype(np.float32), np.array(labels)


def pixel_std(path: Path) -> float:
    return float(np.asarray(Image.open(path).convert("L"), dtype=np.float32).std())


def assert_png(path: Path, size: tuple[int, int] | None = None) -> None:
    assert path.is_file(), f"{path} missing"
    with Image.open(path) as image:
        assert image.format == "PNG"
        if size:
            assert image.size == size
    assert pixel_std(path) > 5, f"{path} looks blank"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A run directory as the trainer leaves it: config, history, lr.csv, best/final models, spec."""
    from training.keras_compat import keras

    base = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)
    data = base / "data"
    x_train, y_train = _write_split(data / "train", 20, rng)
    _write_split(data / "val", VAL_PER_CLASS, rng, MISLABELLED)
    run = base / "runs" / "demo 'run' a"
    cfg = Config()
    cfg.data.source, cfg.data.data_dir, cfg.data.val_split = "folder", str(data), "val"
    cfg.data.image_size, cfg.data.batch_size = SIZE, 8
    cfg.model.name, cfg.train.epochs, cfg.train.target_accuracy = "small_cnn", 4, 0.5
    cfg.slurm.gpus_per_node, cfg.slurm.gpu_type, cfg.slurm.cpus_per_task, cfg.slurm.time_min = 1, "a100", 1, 5
    atomic_write_text(run / rundir.CONFIG, dump(cfg))

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((SIZE, SIZE, 3)), keras.layers.Rescaling(1 / 255.0),
        keras.layers.Conv2D(8, 3, activation="relu"), keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(len(CLASSES), activation="softmax"),
    ])
    model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy", ["accuracy"])
    fit = model.fit(x_train, y_train, batch_size=16, epochs=cfg.train.epochs, verbose=0,
                    validation_data=(x_train[::4], y_train[::4]))
    (run / rundir.CHECKPOINTS).mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "HDF5 is legacy": it is the trainer's format
        model.save(run / rundir.CHECKPOINTS / "best.h5", save_format="h5")
        model.save(run / rundir.MODEL / "final.h5", save_format="h5")
    atomic_write_text(run / rundir.MODEL / "model_spec.json", json.dumps(
        {"architecture": "small_cnn", "image_size": SIZE, "channel_order": "rgb", "mean": [0, 0, 0],
         "std": [1, 1, 1], "classes": CLASSES, "num_classes": len(CLASSES)}))
    h = fit.history
    rows = [f"{e + 1},{h['loss'][e]},{h['accuracy'][e]},1.0,{h['val_loss'][e]},{h['val_accuracy'][e]},1.0,"
            f"0.05,{500 + e},{1.5}\n" for e in range(cfg.train.epochs)]
    (run / rundir.HISTORY).write_text(HISTORY_HEADER + "".join(rows))
    lr_rows = "".join(f"{step},{0.05 * (1 - step / 40):.5f}\n" for step in range(0, 24, 2))
    (run / "lr.csv").write_text("step,lr\n" + lr_rows)
    atomic_write_text(run / rundir.STATUS, json.dumps({"state": "completed", "job_id": "4242", "epoch": 4,
                                                       "epochs": 4, "restarts": 0}))
    return run


def val_dataset(run: Path):
    from training.data.pipeline import build_dataset

    return build_dataset(evaluate.load_config(run).data, "val", training=False, batch_size=5)


def test_curves_from_history_and_lr_csv(tmp_path):
    rows = [f"{e},{2 / e},{0.3 + 0.1 * e},{0.8},{2.2 / e},{0.25 + 0.1 * e},0.85,{0.1 / e},900,12\n"
            for e in range(1, 6)]
    (tmp_path / rundir.HISTORY).write_text(HISTORY_HEADER + "".join(rows))
    # A requeued run logs some steps twice, and the appended file may end mid-line.
    (tmp_path / "lr.csv").write_text("step,lr\n10,0.1\n20,0.09\n10,0.1\n30,0.08\n40,0.0")
    paths = write_curves(tmp_path)
    assert [p.name for p in paths] == ["loss.png", "accuracy.png", "lr.png"]
    for path in paths:
        assert_png(path, (800, 500))


def test_curves_after_one_epoch_without_lr_csv(tmp_path):
    assert write_curves(tmp_path) == []  # nothing finished yet: nothing drawn, no error
    (tmp_path / rundir.HISTORY).write_text(HISTORY_HEADER + "1,2.1,0.2,0.6,2.0,0.25,,0.1,800,30\n")
    started = time.monotonic()
    paths = write_curves(tmp_path)
    assert time.monotonic() - started < 10  # called after every epoch by the chief
    assert {p.name for p in paths} == {"loss.png", "accuracy.png", "lr.png"}  # lr from history's column
    for path in paths:
        assert_png(path, (800, 500))


def test_curves_unchanged_are_not_drawn_again(tmp_path):
    (tmp_path / rundir.HISTORY).write_text(HISTORY_HEADER + "1,2.1,0.2,0.6,2.0,0.25,,0.1,800,30\n")
    (tmp_path / "lr.csv").write_text("step,lr\n1,0.1\n")
    drawn: dict = {}
    paths = write_curves(tmp_path, drawn)
    first = {p.name: p.stat().st_mtime_ns for p in paths}
    (tmp_path / "lr.csv").write_text("step,lr\n1,0.1\n2,0.09\n")  # only the LR moved on
    time.sleep(0.01)
    assert write_curves(tmp_path, drawn) == paths
    again = {p.name: p.stat().st_mtime_ns for p in paths}
    assert again["loss.png"] == first["loss.png"] and again["accuracy.png"] == first["accuracy.png"]
    assert again["lr.png"] != first["lr.png"]


def wait_for(condition, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_live_curves_drawn_by_a_low_priority_helper_then_finally_by_the_chief(tmp_path):
    """The helper redraws after each update, off the training process; close() ends it and draws
    the final plots itself, so they show every epoch even if the helper lagged behind."""
    from training.report.curves import LiveCurves

    history = tmp_path / rundir.HISTORY
    history.write_text(HISTORY_HEADER + "1,2.1,0.2,0.6,2.0,0.25,,0.1,800,30\n")
    live = LiveCurves(tmp_path, min_interval_s=0)
    live.update()
    helper = live._helper
    wait_for(lambda: (tmp_path / "report" / "accuracy.png").is_file())
    assert os.getpriority(os.PRIO_PROCESS, helper.pid) == 19
    assert helper.poll() is None  # it waits for the next epoch
    history.write_text(history.read_text() + "2,1.5,0.4,0.8,1.4,0.45,,0.1,800,30\n")
    live.update()
    paths = live.close()
    assert helper.poll() is not None
    assert [p.name for p in paths] == ["loss.png", "accuracy.png", "lr.png"]
    assert not [p for p in (tmp_path / "report").iterdir() if p.name.startswith(".")]  # no temporaries


def test_live_curves_skip_updates_within_the_interval_and_still_end_with_every_epoch(tmp_path):
    """A run whose epochs take seconds starts no helper; its plots are drawn when it ends."""
    from training.report.curves import LiveCurves

    history = tmp_path / rundir.HISTORY
    history.write_text(HISTORY_HEADER + "1,2.1,0.2,0.6,2.0,0.25,,0.1,800,30\n")
    live = LiveCurves(tmp_path, min_interval_s=3600)
    live.update()
    history.write_text(history.read_text() + "2,1.5,0.4,0.8,1.4,0.45,,0.1,800,30\n")
    live.update()
    assert live._helper is None and not (tmp_path / "report").exists()
    assert [p.name for p in live.close()] == ["loss.png", "accuracy.png", "lr.png"]


def test_live_curves_without_a_helper_draw_in_the_training_process(tmp_path, monkeypatch):
    from training.report import curves

    (tmp_path / rundir.HISTORY).write_text(HISTORY_HEADER + "1,2.1,0.2,0.6,2.0,0.25,,0.1,800,30\n")
    monkeypatch.setattr(curves.sys, "executable", str(tmp_path / "no-such-python"))
    lines = []
    live = curves.LiveCurves(tmp_path, log=lines.append, min_interval_s=0)
    live.update()
    assert (tmp_path / "report" / "loss.png").is_file()  # drawn before update() returned
    assert len(lines) == 1 and "cannot start the curve helper" in lines[0]
    live.close()


@pytest.fixture(scope="module")
def reported_run(trained_run) -> tuple[Path, dict]:
    """The trained run after the chief's end-of-training report from the best checkpoint."""
    model = evaluate.load_model(trained_run / rundir.CHECKPOINTS / "best.h5")
    return trained_run, write_prediction_report(trained_run, model, val_dataset(trained_run), CLASSES,
                                                checkpoint="best")


def test_prediction_report_grids_and_confusion(reported_run):
    trained_run, result = reported_run
    report = trained_run / rundir.REPORT
    for name in ("correct.png", "incorrect.png"):
        assert_png(report / name, (1000, 1100))
    assert_png(report / "confusion.png")
    total = len(CLASSES) * VAL_PER_CLASS + MISLABELLED
    confusion = result["confusion"]
    assert result["examples"] == confusion.sum() == total
    assert result["accuracy"] == pytest.approx(np.trace(confusion) / total)
    assert result["accuracy"] >= 0.8, confusion
    assert confusion[1, 2] >= MISLABELLED, f"red images filed as green should be predicted red: {confusion}"
    assert result["top5"] == 1.0  # three classes: top-k is top-3
    record = json.loads((report / "predictions.json").read_text())
    assert record["confusion"] == confusion.tolist() and record["class_names"] == CLASSES


class _FixedModel:
    """Predicts class (label + 1) % n for most images: a model with known confusions."""

    def __init__(self, n: int):
        self.n = n

    def predict_on_batch(self, images):
        labels = images[:, 0, 0, 0].astype(int)
        logits = np.zeros((len(images), self.n))
        logits[np.arange(len(images)), np.where(labels % 3 == 0, labels, (labels + 1) % self.n)] = 5.0
        return logits  # logits, not probabilities: the report applies the softmax


def test_over_30_classes_lists_most_confused_pairs(tmp_path):
    n = 35
    labels = np.repeat(np.arange(n), 2)
    images = np.broadcast_to(labels[:, None, None, None], (len(labels), 8, 8, 3)).astype(np.float32)
    batches = [(images[i:i + 16], labels[i:i + 16]) for i in range(0, len(labels), 16)]
    result = write_prediction_report(tmp_path, _FixedModel(n), batches, [f"class {i}" for i in range(n)])
    report = tmp_path / rundir.REPORT
    assert not (report / "confusion.png").exists()
    assert_png(report / "most_confused.png")
    with open(report / "most_confused.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 20 and {r["true_class"] for r in rows} <= {f"class {i}" for i in range(n)}
    assert all(int(r["count"]) == 2 and r["fraction_of_true"] == "1.0" for r in rows)
    assert result["accuracy"] == pytest.approx(12 / 35)  # classes 0, 3, ..., 33 are right
    assert np.load(report / "confusion.npy").sum() == 2 * n


def test_summary_has_every_field(reported_run):
    trained_run, _ = reported_run
    write_curves(trained_run)
    provenance.write_part(trained_run, "launch", provenance.launch_record(None))  # as launch writes it
    first = write_summary(trained_run, wall_time_s=12.5, nodes=1, gpus=0)
    summary = write_summary(trained_run, job_id="4243")
    missing = [key for key in FIELDS if summary.get(key) is None]
    assert not missing, f"summary.json lacks {missing}"
    assert summary["created"] == first["created"] and summary["wall_time_s"] == 12.5
    assert summary["job_id"] == "4243"
    assert summary["classes"] == {"0": CLASSES[0], "1": CLASSES[1], "2": CLASSES[2]}
    on_disk = json.loads((trained_run / rundir.REPORT / "summary.json").read_text())
    assert on_disk == summary
    for rel in [*summary["plots"].values(), *summary["predictions"].values(), *summary["models"].values()]:
        assert (trained_run / rel).is_file(), rel
    predictions = json.loads((trained_run / rundir.REPORT / "predictions.json").read_text())
    assert summary["eval"]["accuracy"] == predictions["accuracy"]
    assert summary["target_reached"] is True and summary["epochs_done"] == summary["epochs_total"] == 4


def test_evaluate_recomputes_the_prediction_report_accuracy(reported_run, capsys):
    trained_run, _ = reported_run
    assert evaluate.main(["eval", "--run-dir", str(trained_run), "--checkpoint", "best"]) == 0
    record = json.loads((trained_run / rundir.REPORT / "eval-val.json").read_text())
    reported = json.loads((trained_run / rundir.REPORT / "predictions.json").read_text())
    assert record["accuracy"] == reported["accuracy"] and record["examples"] == reported["examples"]
    assert record["checkpoint_path"] == "checkpoints/best.h5" and record["complete"]
    assert f"accuracy {record['accuracy']:.4f}" in capsys.readouterr().out
    assert_png(trained_run / rundir.REPORT / "eval-val-confusion.png")


def test_evaluate_names_a_missing_checkpoint(trained_run, capsys):
    assert evaluate.main(["eval", "--run-dir", str(trained_run), "--checkpoint", "latest"]) == 2
    assert "latest.json does not exist" in capsys.readouterr().err


def test_predict_writes_a_csv_row_per_readable_image(trained_run, tmp_path, capsys):
    images = evaluate.load_config(trained_run).data.data_dir + "/val"
    broken = Path(images) / CLASSES[0] / "broken.png"
    broken.write_bytes(b"not an image")
    try:
        out = tmp_path / "preds.csv"
        assert evaluate.main(["predict", "--run-dir", str(trained_run), "--images", images,
                              "--out", str(out), "--top-k", "2"]) == 0
    finally:
        broken.unlink()
    assert "skipped unreadable image" in capsys.readouterr().err
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["path", "predicted_class", "confidence", "top2_class", "top2_confidence"]
    assert len(rows) == len(CLASSES) * VAL_PER_CLASS + MISLABELLED
    right = sum(Path(r["path"]).parent.name == r["predicted_class"] for r in rows)
    assert right >= len(CLASSES) * VAL_PER_CLASS - 2
    assert all(0 < float(r["confidence"]) <= 1 and r["top2_class"] != r["predicted_class"] for r in rows)


@pytest.mark.slurm
def test_launch_eval_runs_as_a_gpu_job(reported_run, slurm_cluster, launch_cli):
    trained_run, _ = reported_run
    # --wait: the job may queue behind others on the shared cluster; launch waits for its end.
    done = launch_cli("eval", trained_run, "--wait", timeout=900)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    job_id = re.search(r"submitted job (\d+): eval on 1 node\(s\), 1 GPU\(s\) per node", out).group(1)
    log = trained_run / rundir.LOGS / f"eval-{job_id}.out"
    assert "accuracy" in log.read_text() and "accuracy" in out  # --wait prints the job's output
    record = json.loads((trained_run / rundir.REPORT / "eval-val.json").read_text())
    reported = json.loads((trained_run / rundir.REPORT / "predictions.json").read_text())
    assert record["accuracy"] == reported["accuracy"]
