"""Damaged shards fail with one line naming the shard (and the key or label), never train quietly.

Shards come from the real converter; each test damages a copy the way users' data gets damaged:
an interrupted copy, a 0-byte file, records dropped, keys renamed by another script, labels that
do not fit the classes.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.config import Config, DataConfig, ModelConfig, TrainConfig, dump
from training.data import DataError, as_data_error, shards
from training.data.convert import convert
from training.data.pipeline import build_dataset, dataset_info
from training.keras_compat import tf

pytestmark = pytest.mark.xdist_group("integrity-shards")  # one worker: its module fixture once

REPO = Path(__file__).resolve().parent.parent
CLASSES = ["ant", "bee", "cow"]
SHARD = "train-00000-of-00002"


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("integrity")
    for label, name in enumerate(CLASSES):
        for folder, count in (("train", 6), ("val", 2)):
            for i in range(count):
                path = root / "src" / folder / name / f"{i}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(_jpeg(100 * label + i))
    convert(root / "src", root / "out", {"train": 2, "validation": 1}, workers=1, log=lambda _: None)
    return root / "out"


@pytest.fixture
def data_dir(converted, tmp_path) -> Path:
    """A copy of the converted shards, free to damage, in a folder whose name TensorFlow escapes."""
    return Path(shutil.copytree(converted, tmp_path / "it's \"my\" shards; \\ é"))


def _records(path: Path) -> list[bytes]:
    return [r.numpy() for r in tf.data.TFRecordDataset(str(path))]


def _rewrite(path: Path, records: list[bytes]) -> None:
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)


def _example(label=0, label_key="image/class/label", encoded=None) -> bytes:
    feature = {"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded or _jpeg(0)])),
               label_key: tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _forget_manifest(data_dir: Path) -> None:
    """labels.json as older conversions wrote it: no shard list, so only reading can tell."""
    labels = json.loads((data_dir / "labels.json").read_text())
    del labels["shards"]
    (data_dir / "labels.json").write_text(json.dumps(labels))


def _failure(data_dir: Path, split: str = "train", **overrides) -> str:
    """The one-line DataError that starting (dataset_info) and reading a split ends in."""
    data = DataConfig(source="tfrecord", data_dir=str(data_dir), image_size=8, **overrides)
    with pytest.raises(Exception) as caught:
        dataset_info(data)
        for _ in build_dataset(data, split, training=False, batch_size=4):
            pass
    err = as_data_error(caught.value)
    # The traceback's frames hold the iterator: left to a garbage collection in a later test, its
    # TensorFlow destructor could wait seconds there for the pipeline's threads (14 to 20 s seen in
    # the quick tier). Freed now, it goes at once.
    traceback.clear_frames(caught.tb)
    assert isinstance(err, DataError), f"not a DataError: {caught.value!r}"
    message = str(err)
    assert "\n" not in message and "--resume" not in message
    return message


def test_manifest_lists_every_shard_with_its_size_and_records(converted):
    labels = json.loads((converted / "labels.json").read_text())
    on_disk = sorted(p.name for p in converted.iterdir() if p.name.startswith(("train-", "validation-")))
    assert sorted(labels["shards"]) == on_disk == [SHARD, "train-00001-of-00002", "validation-00000-of-00001"]
    for name, entry in labels["shards"].items():
        assert entry == {"bytes": (converted / name).stat().st_size, "records": len(_records(converted / name))}
    assert sum(e["records"] for n, e in labels["shards"].items() if n.startswith("train-")) == 18


def test_intact_shards_read_every_record(converted):
    data = DataConfig(source="tfrecord", data_dir=str(converted), image_size=8)
    labels = [int(v) for _, batch in build_dataset(data, "train", False, 5) for v in batch.numpy()]
    assert sorted(labels) == [0] * 6 + [1] * 6 + [2] * 6


def test_truncated_shard_fails_at_start_against_the_manifest(data_dir):
    shard = data_dir / SHARD
    shard.write_bytes(shard.read_bytes()[:-5])  # the last record loses its checksum
    message = _failure(data_dir)
    assert f"shard {shard} is" in message and "cut short or replaced" in message


@pytest.mark.parametrize("cut", ["inside the data", "inside the header"])
def test_truncated_shard_without_manifest_fails_while_reading(data_dir, cut):
    _forget_manifest(data_dir)
    shard = data_dir / SHARD
    last = len(_records(shard)[-1]) + shards.RECORD_OVERHEAD
    # TensorFlow reads a record cut in its 12-byte header as the end of the file, without a word.
    keep = 6 if cut == "inside the header" else last - 5
    shard.write_bytes(shard.read_bytes()[:-(last - keep)])
    message = _failure(data_dir)
    assert f"shard {shard} is damaged: its records end at byte" in message


def test_truncated_shard_without_labels_json_fails_when_counted_at_start(data_dir):
    (data_dir / "labels.json").unlink()
    shard = data_dir / SHARD
    shard.write_bytes(shard.read_bytes()[:-5])
    message = _failure(data_dir, num_classes=3)
    assert f"shard {shard} is cut short: record" in message


def test_empty_shard_fails_at_start(data_dir):
    (data_dir / SHARD).write_bytes(b"")
    assert f"shard {data_dir / SHARD} is empty (0 bytes)" in _failure(data_dir)


def test_shard_with_fewer_records_than_written_fails(data_dir):
    shard = data_dir / SHARD
    written = _records(shard)
    _rewrite(shard, written[:-2])  # a well-formed file: TensorFlow alone reads it without complaint
    message = _failure(data_dir)
    assert f"shard {shard} is" in message and f"({len(written)} records; labels.json)" in message


def test_record_count_is_checked_while_reading_too(data_dir):
    shard = str(data_dir / SHARD)
    written = len(_records(data_dir / SHARD))
    ds = shards.read_shard(shard, os.path.getsize(shard), written + 1, 3, 0, buffer_size=1 << 16)
    with pytest.raises(tf.errors.InvalidArgumentError) as caught:
        list(ds)
    assert str(as_data_error(caught.value)).startswith(
        f"shard {shard} holds {written} records but the converter wrote {written + 1} (labels.json)")


def test_missing_shard_fails_at_start(data_dir):
    (data_dir / SHARD).unlink()
    message = _failure(data_dir)
    assert "lacks 1 of the 2 train shards that labels.json lists, first " + SHARD in message


def test_renamed_feature_key_names_shard_and_key(data_dir):
    _forget_manifest(data_dir)
    shard = data_dir / SHARD
    _rewrite(shard, [_example(label_key="image/class/labels")])
    message = _failure(data_dir)
    assert message.startswith(f"shard {shard} has no feature 'image/class/label' (its keys: "
                              "image/class/labels, image/encoded)")


def test_mistyped_feature_key_names_shard_and_key(data_dir):
    _forget_manifest(data_dir)
    shard = data_dir / SHARD
    record = tf.train.Example.FromString(_records(shard)[0])
    record.features.feature["image/class/label"].Clear()
    record.features.feature["image/class/label"].bytes_list.value.append(b"1")
    _rewrite(shard, [record.SerializeToString()])
    message = _failure(data_dir)
    assert message.startswith(f"shard {shard}: feature 'image/class/label' holds 1 value(s) in bytes_list")


def test_key_missing_from_a_later_record_names_shard_and_key(data_dir):
    _forget_manifest(data_dir)
    shard = data_dir / SHARD
    _rewrite(shard, [_example(), _example(label_key="label")])
    message = _failure(data_dir)
    assert message.startswith(f"shard {shard} has a record without feature 'image/class/label'")


def test_label_outside_the_classes_names_shard_and_label(data_dir):
    _forget_manifest(data_dir)
    shard = data_dir / SHARD
    _rewrite(shard, [_example(0), _example(7)])
    message = _failure(data_dir)
    assert message.startswith(f"shard {shard}: label 7 is outside [0, 3)")
    assert "label_offset" not in message


def test_one_based_labels_suggest_label_offset(data_dir):
    _forget_manifest(data_dir)
    _rewrite(data_dir / SHARD, [_example(3)])
    message = _failure(data_dir)
    assert "label 3 is outside [0, 3); the labels look 1-based: set data.label_offset=1" in message


def _trainer(run_dir: Path, data_dir: Path) -> tuple[subprocess.CompletedProcess, dict]:
    """`python -m training.main` on a run with a tiny model reading `data_dir`."""
    run_dir.mkdir()
    cfg = Config(data=DataConfig(source="tfrecord", data_dir=str(data_dir), image_size=8, batch_size=4,
                                 shuffle_buffer=4),
                 model=ModelConfig(name="small_cnn", head_units=[4], channel_order="rgb"),
                 train=TrainConfig(epochs=1))
    (run_dir / "config.yaml").write_text(dump(cfg))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "LAUNCH_"))}
    done = subprocess.run([sys.executable, "-m", "training.main", "--run-dir", str(run_dir)],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    return done, json.loads((run_dir / "status.json").read_text())


@pytest.mark.parametrize("damage, says", [
    ("label", "label 7 is outside [0, 3)"),  # found inside model.fit, by the tf.data graph
    ("key", "has no feature 'image/class/label'"),  # found before the first step
])
def test_trainer_fails_with_one_line_and_status_failed(data_dir, tmp_path, damage, says):
    _forget_manifest(data_dir)
    shard = data_dir / SHARD
    _rewrite(shard, [_example(7)] * 4 if damage == "label" else [_example(label_key="class")])
    done, status = _trainer(tmp_path / "run", data_dir)
    errors = [line for line in done.stderr.splitlines() if line.startswith("training: error:")]
    assert done.returncode == 1 and len(errors) == 1, done.stderr[-3000:]
    assert f"shard {shard}" in errors[0] and says in errors[0]
    assert "Traceback" not in done.stderr and "--resume" not in done.stderr
    assert status["state"] == "failed" and says in status["message"] and "--resume" not in status["message"]


@pytest.mark.slurm
def test_job_on_the_cluster_fails_at_start_naming_the_shard_and_never_suggests_resume(
        slurm_cluster, data_dir, tmp_path):
    from slurm_jobs import launch, status, wait_final

    _forget_manifest(data_dir)  # as for shards without a manifest, which launch cannot check
    shard = data_dir / SHARD
    _rewrite(shard, [_example(7)] * 4)
    job_id, run_dir = launch(tmp_path / "runs", "data.source=tfrecord", f"data.data_dir={data_dir}",
                             "data.image_size=8", "data.batch_size=4", "train.epochs=1")
    assert wait_final(job_id, 10 * 60) == "FAILED"
    err = (run_dir / "logs" / f"slurm-{job_id}.err").read_text()
    errors = [line for line in err.splitlines() if line.startswith("training: error:")]
    assert len(errors) == 1 and f"shard {shard}: label 7 is outside [0, 3)" in errors[0], err[-3000:]
    assert "--resume" not in err and "Traceback" not in err
    assert status(run_dir)["state"] == "failed" and "label 7" in status(run_dir)["message"]
