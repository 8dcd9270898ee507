"""The training engine end to end on CPU: the demo must reach real accuracy with each backend,
and its checkpoints must reload to the same accuracy.

Runs go through the real `launch --cluster local` entry point; the SLURM variants live in
tests/test_launch_slurm.py.
"""
import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ACCURACY_BAR = 0.90
EPOCHS = 5  # the shipped demo runs 8; 5 already clears the bar with margin and saves CI time

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("mirrored-run")]  # one worker: its module fixture once


OUTPUT: dict[Path, subprocess.CompletedProcess] = {}  # run dir -> what launch printed


def launch_local(run_root: Path, *args: str, timeout: int = 600) -> Path:
    """Runs `launch --cluster local` on the demo and returns the new run directory."""
    cmd = [sys.executable, "-m", "launcher.cli", "--config", str(REPO / "configs" / "demo.yaml"),
           "--cluster", "local", "--run-root", str(run_root), f"train.epochs={EPOCHS}", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert done.returncode == 0, f"launch failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    (run_dir,) = [p for p in run_root.iterdir() if p.is_dir()]
    OUTPUT[run_dir] = done
    return run_dir


def history(run_dir: Path) -> list[dict]:
    with open(run_dir / "history.csv") as fh:
        return list(csv.DictReader(fh))


def evaluate(model_path: Path, data_cfg) -> float:
    """Accuracy of a saved HDF5 model on the whole validation split, single replica."""
    from training.data.pipeline import build_dataset
    from training.keras_compat import keras
    from training.models import custom_objects

    model = keras.models.load_model(model_path, custom_objects=custom_objects(), compile=False)
    correct = total = 0
    for images, labels in build_dataset(data_cfg, "val", False, 128, None, 0):
        predicted = model(images, training=False).numpy().argmax(axis=1)
        correct += int((predicted == labels.numpy()).sum())
        total += len(labels)
    return correct / total


def run_config(run_dir: Path):
    import yaml

    from core.config import from_dict

    return from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))


def _relabel_as_imagenet(src: Path, dst: Path) -> None:
    """Copies demo shards with 1-based labels and no labels.json, as the standard ImageNet
    conversion scripts write them."""
    from training.keras_compat import tf

    dst.mkdir()
    for shard in sorted(src.glob("*-of-*")):
        with tf.io.TFRecordWriter(str(dst / shard.name)) as writer:
            for record in tf.data.TFRecordDataset(str(shard)):
                example = tf.train.Example.FromString(record.numpy())
                label = example.features.feature["image/class/label"].int64_list.value
                label[0] += 1
                writer.write(example.SerializeToString())


@pytest.fixture(scope="module")
def mirrored_run(tmp_path_factory):
    """MirroredStrategy over two logical CPU devices, on the demo's images as ImageNet's
    conversion scripts write shards: labels 1 to 10 (`data.label_offset`), no labels.json."""
    from core.config import DataConfig
    from training.data.pipeline import resolve_data_dir

    root = tmp_path_factory.mktemp("mirrored")
    shards = root / "imagenet-style"
    _relabel_as_imagenet(Path(resolve_data_dir(DataConfig(source="demo"))), shards)
    return launch_local(root / "runs", "runtime.cpu_devices=2", "data.source=tfrecord", f"data.data_dir={shards}",
                        "data.num_classes=10", "data.label_offset=1", "data.val_split=validation")


def test_mirrored_over_two_cpu_devices_reaches_the_bar(mirrored_run):
    rows = history(mirrored_run)
    assert [int(r["epoch"]) for r in rows] == list(range(1, EPOCHS + 1))
    assert float(rows[-1]["val_accuracy"]) >= ACCURACY_BAR, rows[-1]
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"]) / 2
    log = (mirrored_run / "logs" / "local-0.out").read_text()
    assert "2 replicas over 1 process(es)" in log
    status = json.loads((mirrored_run / "status.json").read_text())
    assert status["state"] == "completed" and status["epoch"] == EPOCHS


def test_a_local_run_ends_with_one_result_line_and_no_tensorflow_chatter(mirrored_run):
    from training.keras_compat import START_UP_CHATTER

    done = OUTPUT[mirrored_run]
    said = done.stdout.splitlines()
    assert re.match(r"\[train\] result: val accuracy best [01]\.\d{4} \(epoch \d\)", said[-1]), said[-5:]
    assert f"; target 0.9 reached; {EPOCHS} of {EPOCHS} epochs in " in said[-1]
    assert said[-1].endswith(f"; report {mirrored_run}/report/summary.json")
    assert sum(line.startswith("[train] result: ") for line in said) == 1
    log = (mirrored_run / "logs" / "local-0.out").read_text().splitlines()
    assert log[-1] == said[-1]
    chatter = [line for line in said + done.stderr.splitlines() + log if START_UP_CHATTER.match(line)]
    assert chatter == [], chatter
    assert done.stderr == "", done.stderr


def test_the_run_says_what_produced_it(mirrored_run):
    import platform

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from training.keras_compat import tf

    produced = json.loads((mirrored_run / "report" / "summary.json").read_text())["provenance"]
    job = produced["job"]
    assert (job["tensorflow"], job["python"]) == (tf.__version__, platform.python_version())
    assert (job["backend"], job["nodes"], job["gpus_per_node"], job["replicas"]) == ("mirrored", 1, 0, 2)
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # a checkout, not an unpacked release
        assert job["code"]["commit"] == head.stdout.strip() and isinstance(job["code"]["dirty"], bool)
    assert produced["launch"]["config"]["path"] == str(REPO / "configs" / "demo.yaml")
    acc = EventAccumulator(str(mirrored_run / "tensorboard" / "config"), size_guidance={"tensors": 0})
    acc.Reload()
    assert "provenance" in acc.Tags()["tensors"]


def test_checkpoints_reload_to_the_same_accuracy(mirrored_run):
    cfg = run_config(mirrored_run)
    checkpoints = mirrored_run / "checkpoints"
    latest = json.loads((checkpoints / "latest.json").read_text())
    assert latest["epoch"] == EPOCHS and not latest["partial_epoch"]
    best = evaluate(checkpoints / "best.h5", cfg.data)
    assert best >= ACCURACY_BAR
    # The final model and the last resumable checkpoint hold the same weights.
    assert evaluate(checkpoints / latest["weights"], cfg.data) == pytest.approx(
        evaluate(mirrored_run / "model" / "final.h5", cfg.data))
    # The summary's figure is recomputed from the best checkpoint on the whole split.
    summary = json.loads((mirrored_run / "report" / "summary.json").read_text())
    assert summary["eval"]["checkpoint"] == "best"
    assert summary["eval"]["accuracy"] == pytest.approx(best)


def test_tensorboard_has_train_and_validation_curves(mirrored_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = {}
    for sub in ("train", "validation"):
        acc = EventAccumulator(str(mirrored_run / "tensorboard" / sub), size_guidance={"tensors": 0})
        acc.Reload()
        tags[sub] = set(acc.Tags()["tensors"]) | set(acc.Tags()["scalars"])
    assert {"epoch_loss", "epoch_accuracy", "epoch_top5", "epoch_learning_rate"} <= tags["train"]
    assert {"epoch_loss", "epoch_accuracy", "epoch_top5"} <= tags["validation"]
    # The resolved config as text, and as hparams at the root, above train/ and validation/, so
    # that TensorBoard's HParams tab shows each run (a sweep's points) with its metrics.
    acc = EventAccumulator(str(mirrored_run / "tensorboard" / "config"), size_guidance={"tensors": 0})
    acc.Reload()
    assert "config" in acc.Tags()["tensors"]
    acc = EventAccumulator(str(mirrored_run / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    assert "_hparams_/session_start_info" in acc.Tags()["tensors"]


def test_multiworker_two_processes_stop_on_a_workers_sigterm_then_reach_the_bar(tmp_path):
    # SIGTERM to the second worker as soon as it reports, right after its strategy started, when
    # TensorFlow's coordination service used to have swallowed it: both stop at their vote, save,
    # and the resumed run reaches the bar. A tiny checkpoint interval in minutes makes the chief
    # call for a step checkpoint at almost every agreement point: MultiWorkerMirrored saves
    # collectively, and a worker that saved at another step than the chief would hang the job.
    import signal

    from test_step_checkpoints import SAVED

    epochs = 3  # two processes clear the bar in three (0.97 measured)
    cmd = [sys.executable, "-m", "launcher.cli", "--config", str(REPO / "configs" / "demo.yaml"), "--cluster",
           "local", "--run-root", str(tmp_path), f"train.epochs={epochs}", "--nodes", "2", "--backend", "multiworker",
           "train.checkpoint_every_minutes=0.0001"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not (reports := list(tmp_path.glob("*/logs/env-1.json"))):
        assert time.monotonic() < deadline and proc.poll() is None, "the second worker never reported"
        time.sleep(0.05)
    os.kill(json.loads(reports[0].read_text())["pid"], signal.SIGTERM)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 75, output[-3000:]
    run_dir = reports[0].parent.parent
    status = json.loads((run_dir / "status.json").read_text())
    assert (status["state"], status["message"]) == (
        "stopped", "stopped by a stop signal to another worker; checkpoint saved"), status
    done = subprocess.run([sys.executable, "-m", "launcher.cli", "--resume", str(run_dir), "--cluster", "local"],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    rows = history(run_dir)
    assert [int(r["epoch"]) for r in rows] == list(range(1, epochs + 1))
    assert float(rows[-1]["val_accuracy"]) >= ACCURACY_BAR, rows[-1]
    assert "2 replicas over 2 process(es)" in (run_dir / "logs" / "local-0.out").read_text()
    # Every whole epoch of the resumed run (epoch 1 was cut by the stop) has an agreement point.
    saved_in = {int(epoch) for _, epoch, _ in SAVED.findall(done.stdout)}
    assert set(range(2, epochs + 1)) <= saved_in, done.stdout[-3000:]
    # Only the chief writes into the run directory: no second set of files, no worker leftovers.
    names = {p.name for p in (run_dir / "checkpoints").iterdir()}
    assert {"best.h5", "latest.json"} <= names and len(names) <= 4, names
    assert not [p for p in run_dir.rglob("*") if "workertemp" in p.name or p.name.startswith("ckpt-worker")]
    assert evaluate(run_dir / "checkpoints" / "best.h5", run_config(run_dir).data) >= ACCURACY_BAR


def test_report_holds_pictures_and_a_complete_summary_that_evaluate_agrees_with(mirrored_run):
    import numpy as np
    from PIL import Image

    from training.report.summary import FIELDS

    report = mirrored_run / "report"
    for name in ("loss", "accuracy", "lr", "correct", "incorrect", "confusion"):
        with Image.open(report / f"{name}.png") as image:
            assert image.width >= 400 and image.height >= 300, name
            assert np.asarray(image.convert("L")).std() > 5, f"{name}.png looks blank"
    summary = json.loads((report / "summary.json").read_text())
    # job_id stays null in local mode: there is no SLURM job.
    empty = [key for key in FIELDS if summary.get(key) is None and key != "job_id"]
    assert not empty, f"summary.json fields left empty: {empty}"
    done = subprocess.run([sys.executable, "-m", "training.evaluate", "eval", "--run-dir", str(mirrored_run),
                           "--checkpoint", "best"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    recomputed = json.loads((report / "eval-val.json").read_text())
    assert recomputed["examples"] == 360
    assert summary["eval"]["accuracy"] == pytest.approx(recomputed["accuracy"])
