"""The tf.data pipeline: shapes, file sharding, ImageNet-style shards, folders, synthetic, demo."""
from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.config import DataConfig
from training.data import DataError
from training.data.convert import convert
from training.data.demo import DEMO_NAME, cache_root, prepare_demo
from training.data.pipeline import build_dataset, dataset_info, shard_files
from training.keras_compat import keras, tf

pytestmark = pytest.mark.xdist_group("pipeline-shards")  # one worker: its module fixture once

CLASSES = ["cat", "dog;", "o'neil \"x\""]  # sorted already, hostile on purpose


def _jpeg(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    # No chroma subsampling: colours then stay inside their 8x8 blocks, so crops can be checked.
    Image.fromarray(pixels).save(buf, "JPEG", quality=95, subsampling=0)
    return buf.getvalue()


def _pixels(seed: int, height: int = 20, width: int = 30) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _tree(root: Path, train_per_class: int = 6, val_per_class: int = 2, val_folder: str = "val") -> Path:
    for label, name in enumerate(CLASSES):
        for folder, count in (("train", train_per_class), (val_folder, val_per_class)):
            for i in range(count):
                path = root / folder / name / f"img {i}; '{label}'.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(_jpeg(_pixels(100 * label + i)))
    return root


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pipeline")
    convert(_tree(root / "src"), root / "out", {"train": 4, "validation": 2}, workers=1, log=lambda _: None)
    return root / "out"


def _context(pipelines: int, index: int) -> tf.distribute.InputContext:
    return tf.distribute.InputContext(num_input_pipelines=pipelines, input_pipeline_id=index,
                                      num_replicas_in_sync=pipelines)


def _labels(ds: tf.data.Dataset) -> list[int]:
    return [int(v) for _, labels in ds for v in labels.numpy()]


def test_training_batches_are_full_random_crops_and_repeat(shards):
    data = DataConfig(source="tfrecord", data_dir=str(shards), image_size=16, min_crop_area=0.3)
    ds = build_dataset(data, "train", training=True, batch_size=4, seed=1)
    batches = list(ds.take(10))  # 40 examples from an 18-example split: it must repeat
    for images, labels in batches:
        assert images.shape == (4, 16, 16, 3) and images.dtype == tf.uint8
        assert labels.dtype == tf.int32 and set(labels.numpy()) <= {0, 1, 2}


def test_eval_is_one_finite_pass_keeping_the_last_batch(shards):
    data = DataConfig(source="tfrecord", data_dir=str(shards), image_size=16)
    info = dataset_info(data)
    assert (info.num_classes, info.class_names, info.train_examples, info.val_examples) == (3, CLASSES, 18, 6)
    sizes = [int(images.shape[0]) for images, _ in build_dataset(data, "val", training=False, batch_size=4)]
    assert sizes == [4, 2]
    train_labels = _labels(build_dataset(data, "train", training=False, batch_size=5))
    assert sorted(train_labels) == [0] * 6 + [1] * 6 + [2] * 6


def test_two_pipelines_read_disjoint_files_covering_the_split(shards):
    data = DataConfig(source="tfrecord", data_dir=str(shards), image_size=8)
    everything = shard_files(data, "train")
    parts = [shard_files(data, "train", _context(2, i)) for i in range(2)]
    assert len(everything) == 4 and all(len(p) == 2 for p in parts)
    assert not set(parts[0]) & set(parts[1]) and sorted(parts[0] + parts[1]) == everything
    counts = [len(_labels(build_dataset(data, "train", False, 64, _context(2, i)))) for i in range(2)]
    assert sum(counts) == 18 and all(counts)
    with pytest.raises(DataError, match="2 validation files cannot be split between 3 input pipelines"):
        shard_files(data, "val", _context(3, 0))


def _imagenet_example(pixels: np.ndarray, label: int, synset: str, text: str = "a thing") -> bytes:
    """A record with every key the standard ImageNet conversion writes, labels 1-based."""
    def b(v):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    def i(v):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))

    def f(v):
        return tf.train.Feature(float_list=tf.train.FloatList(value=v))

    height, width, _ = pixels.shape
    feature = {"image/height": i(height), "image/width": i(width), "image/colorspace": b(b"RGB"),
               "image/channels": i(3), "image/class/label": i(label), "image/class/synset": b(synset.encode()),
               "image/class/text": b(text.encode()), "image/object/bbox/xmin": f([0.1]),
               "image/object/bbox/xmax": f([0.9]), "image/object/bbox/ymin": f([0.2]),
               "image/object/bbox/ymax": f([0.8]), "image/object/bbox/label": tf.train.Feature(
                   int64_list=tf.train.Int64List(value=[label])),
               "image/format": b(b"JPEG"), "image/filename": b(f"{synset}_1.JPEG".encode()),
               "image/encoded": b(_jpeg(pixels))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def test_standard_imagenet_shards_read_with_label_offset(tmp_path):
    # Wide images: red left edge, green centre square, blue right edge. The eval centre crop
    # (fraction 1.0 of the shorter side) must see only green.
    pixels = np.zeros((16, 32, 3), np.uint8)
    pixels[:, :8, 0] = pixels[:, 8:24, 1] = pixels[:, 24:, 2] = 255
    for name, labels in (("train-00000-of-00002", [1, 2]), ("train-00001-of-00002", [3]),
                         ("validation-00000-of-00001", [1, 2, 3])):
        with tf.io.TFRecordWriter(str(tmp_path / name)) as writer:
            for label in labels:
                writer.write(_imagenet_example(pixels, label, f"n0000000{label}"))
    data = DataConfig(source="tfrecord", data_dir=str(tmp_path), label_offset=1, num_classes=3,
                      image_size=16, val_crop_fraction=1.0)
    info = dataset_info(data)
    assert (info.num_classes, info.train_examples, info.val_examples) == (3, 3, 3)
    images, labels = next(iter(build_dataset(data, "val", training=False, batch_size=8)))
    assert labels.numpy().tolist() == [0, 1, 2]
    assert np.abs(images.numpy().astype(np.float32) - [0, 255, 0]).max() < 8
    with pytest.raises(DataError, match="set data.num_classes"):
        dataset_info(DataConfig(source="tfrecord", data_dir=str(tmp_path), label_offset=1))


def _imagenet_shards(folder: Path, texts: dict[int, str]) -> None:
    pixels = _pixels(0)
    for name, labels in (("train-00000-of-00001", [1, 2, 3]), ("validation-00000-of-00001", [2, 3, 2, 1])):
        with tf.io.TFRecordWriter(str(folder / name)) as writer:
            for label in labels:
                writer.write(_imagenet_example(pixels, label, f"n0{label}", texts.get(label, "")))


def test_imagenet_class_names_come_from_text_or_synset_features(tmp_path):
    _imagenet_shards(tmp_path, {1: "tench, Tinca tinca", 3: "goldfish"})
    data = DataConfig(source="tfrecord", data_dir=str(tmp_path), label_offset=1, num_classes=3)
    assert dataset_info(data).class_names == ["tench, Tinca tinca", "n02", "goldfish"]
    # A class no validation record shows keeps its number.
    assert dataset_info(DataConfig(source="tfrecord", data_dir=str(tmp_path), label_offset=1,
                                   num_classes=4)).class_names == ["tench, Tinca tinca", "n02", "goldfish", "3"]


def test_imagenet_class_names_come_from_synsets_txt_first(tmp_path):
    _imagenet_shards(tmp_path, {1: "from the record"})
    (tmp_path / "synsets.txt").write_text("n01440764 tench, Tinca tinca\nn01443537\n\nn01484850 great white shark\n")
    data = DataConfig(source="tfrecord", data_dir=str(tmp_path), label_offset=1, num_classes=3)
    assert dataset_info(data).class_names == ["tench, Tinca tinca", "n01443537", "great white shark"]
    with pytest.raises(DataError, match=r"synsets.txt names 3 classes but there are 5 \(data.num_classes\)"):
        dataset_info(DataConfig(source="tfrecord", data_dir=str(tmp_path), label_offset=1, num_classes=5))


def test_labels_json_offset_must_match_the_config(shards):
    with pytest.raises(DataError, match="set data.label_offset=0"):
        dataset_info(DataConfig(source="tfrecord", data_dir=str(shards), label_offset=1))
    with pytest.raises(DataError, match="no TFRecord shards named test-"):
        shard_files(DataConfig(source="tfrecord", data_dir=str(shards), val_split="test"), "val")


def test_folder_source_labels_from_sorted_class_folders(tmp_path):
    root = _tree(tmp_path / "tree", train_per_class=2, val_per_class=1)
    (root / "val" / CLASSES[1] / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    data = DataConfig(source="folder", data_dir=str(root), image_size=12, val_crop_fraction=1.0)
    info = dataset_info(data)  # val_split "validation" falls back to the val/ folder
    assert info.class_names == CLASSES and info.train_examples == 6
    # The broken file is dropped, not fatal; each class keeps its one good image.
    assert sorted(_labels(build_dataset(data, "val", training=False, batch_size=8))) == [0, 1, 2]
    train = build_dataset(data, "train", training=True, batch_size=4, input_context=_context(2, 1))
    images, _ = next(iter(train))
    assert images.shape == (4, 12, 12, 3)
    assert len(shard_files(data, "train", _context(2, 0))) == 3



# Reduced-DCT-scale decoding against a full decode + crop + resize of the same window, as a mean
# absolute difference per channel on the 0..255 scale. The scaled IDCT averages each 2x2 .. 8x8
# block where a plain bilinear resize samples 2x2 pixels (and aliases): against that, measured
# 1.7-2.5 on these photo-like 1600x1200 images; against an antialiased resize (what a downscale
# should give), 0.5-1.6; the two references differ from each other by 1.8-2.1.
DCT_TOLERANCE = 3.0  # against full decode + crop + bilinear resize, today's path
DCT_TOLERANCE_ANTIALIASED = 2.0  # against full decode + crop + antialiased resize


def _photo_jpeg(width: int, height: int, seed: int) -> bytes:
    """Smooth colour regions, texture and noise: what a JPEG decoder sees in photos.

    The texture's scale grows with the image, as a photo taken at higher resolution shows the
    same scene in more pixels: cells of 1/60 of the width (8 pixels at 500 wide).
    """
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), np.int16)
    cell = max(1, width // 60)
    mid = rng.integers(0, 256, (height // cell, width // cell, 3), dtype=np.uint8)
    texture = np.asarray(Image.fromarray(mid).resize((width, height), Image.BILINEAR), np.int16) - 128
    noise = rng.integers(-8, 9, (height, width, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(base + texture // 3 + noise, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.mark.parametrize("training", [False, True])
def test_reduced_dct_scale_decode_stays_close_to_a_full_decode(training):
    from training.data.pipeline import DCT_RATIOS, crop_window, dct_window, decode_crop_resize

    data = DataConfig(image_size=112, min_crop_area=0.3, val_crop_fraction=0.875)
    used = set()
    for seed in range(3):
        encoded = tf.constant(_photo_jpeg(1600, 1200, seed))
        crop_seed = tf.constant([7, seed], tf.int64)  # fixes the training crop
        window = crop_window(tf.io.extract_jpeg_shape(encoded), data, training, crop_seed)
        exact = decode_crop_resize(encoded, data, training, crop_seed, dct_scaling=False).numpy()
        whole = tf.io.decode_jpeg(encoded, channels=3)
        assert np.abs(exact - tf.image.resize(tf.slice(whole, [*window[:2], 0], [*window[2:], 3]), [112, 112])
                      ).max() <= 0.5 + 1e-3  # without scaling: only the rounding to uint8
        index, scaled = dct_window(window, data.image_size)
        ratio = DCT_RATIOS[int(index)]
        used.add(ratio)
        # The same window as the scaled decode shows, at full resolution.
        top, left, height, width = scaled.numpy() * ratio
        window = [top, left, min(height, 1200 - top), min(width, 1600 - left)]
        full = tf.slice(whole, [*window[:2], 0], [*window[2:], 3])
        expected = tf.image.resize(full, [112, 112]).numpy()
        got = decode_crop_resize(encoded, data, training, crop_seed)
        assert got.dtype == tf.uint8 and got.shape == (112, 112, 3)
        error = np.abs(got.numpy() - expected).mean(axis=(0, 1))
        assert error.max() <= DCT_TOLERANCE, f"window {window}: mean abs difference per channel {error}"
        smooth = tf.image.resize(full, [112, 112], antialias=True).numpy()
        error = np.abs(got.numpy() - smooth).mean(axis=(0, 1))
        assert error.max() <= DCT_TOLERANCE_ANTIALIASED, f"window {window}: vs antialiased {error}"
    assert used - {1}, "no image was decoded at reduced scale"


def test_uint8_batches_normalise_in_the_model_as_the_float_pipeline_did(shards):
    """The model's normalised input from the uint8 pipeline vs the float32 pipeline it replaced."""
    from training.data.pipeline import crop_window
    from training.models import Preprocess

    data = DataConfig(source="tfrecord", data_dir=str(shards), image_size=16, val_crop_fraction=0.8)
    images, _ = next(iter(build_dataset(data, "val", training=False, batch_size=8)))
    assert images.dtype == tf.uint8
    records = tf.data.TFRecordDataset(sorted(str(p) for p in shards.glob("validation-*")))
    before = []  # the previous pipeline: crop-window decode, float32 bilinear resize, no rounding
    for record in records:
        encoded = tf.train.Example.FromString(record.numpy()).features.feature["image/encoded"].bytes_list.value[0]
        window = crop_window(tf.io.extract_jpeg_shape(encoded), data, False, None)
        before.append(tf.image.resize(tf.io.decode_and_crop_jpeg(encoded, window, channels=3), [16, 16]))
    std = [58.395, 57.12, 57.375]
    normalise = Preprocess("rgb", [123.675, 116.28, 103.53], std)
    difference = np.abs(normalise(images).numpy() - normalise(tf.stack(before)).numpy())
    # Rounding to uint8 moves a pixel by at most half a level: 0.5 / std after normalising.
    assert difference.max() <= 0.5 / min(std) + 1e-5


def test_synthetic_batches_are_integer_valued_and_eval_is_finite():
    data = DataConfig(source="synthetic", image_size=8, synthetic_examples=200, synthetic_classes=7)
    info = dataset_info(data)
    assert (info.num_classes, info.train_examples, info.val_examples) == (7, 200, 20)
    images, labels = next(iter(build_dataset(data, "train", True, 16)))
    values = images.numpy()
    assert images.shape == (16, 8, 8, 3) and images.dtype == tf.uint8 and values.max() > values.min()
    assert labels.numpy().max() < 7
    assert len(list(build_dataset(data, "val", False, 8))) == 3  # ceil(20 / 8)
    assert shard_files(data, "train") == []


def test_demo_is_built_once_even_when_called_concurrently(tmp_path, monkeypatch):
    results = []
    threads = [threading.Thread(target=lambda: results.append(prepare_demo(tmp_path))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [tmp_path / DEMO_NAME] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".{DEMO_NAME}.lock", DEMO_NAME]  # no leftovers
    labels_json = tmp_path / DEMO_NAME / "labels.json"
    stamp, started = labels_json.stat().st_mtime_ns, time.monotonic()
    assert prepare_demo(tmp_path) == tmp_path / DEMO_NAME
    assert time.monotonic() - started < 0.5 and labels_json.stat().st_mtime_ns == stamp

    labels = json.loads(labels_json.read_text())
    assert labels["classes"] == [str(d) for d in range(10)]
    assert labels["counts"] == {"train": 1437, "validation": 360} and labels["skipped"] == 0
    data = DataConfig(source="demo", data_dir=str(tmp_path), image_size=32, val_crop_fraction=1.0)
    assert len(shard_files(data, "train")) == 8 and len(shard_files(data, "val")) == 4
    assert len(_labels(build_dataset(data, "val", training=False, batch_size=128))) == 360
    monkeypatch.setenv("LAUNCH_DATA_CACHE", str(tmp_path))
    assert cache_root("") == tmp_path and cache_root("/elsewhere") == Path("/elsewhere")


@pytest.mark.slow
def test_small_cnn_learns_the_demo_set(tmp_path):
    """The demo set through this pipeline is learnable: a tiny CNN passes 90% in a few epochs."""
    data = DataConfig(source="demo", data_dir=str(tmp_path), image_size=32, min_crop_area=0.85)
    info = dataset_info(data)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((32, 32, 3)), keras.layers.Rescaling(1 / 255),
        keras.layers.Conv2D(16, 3, activation="relu"), keras.layers.MaxPool2D(),
        keras.layers.Conv2D(32, 3, activation="relu"), keras.layers.MaxPool2D(),
        keras.layers.Flatten(), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)])
    model.compile(keras.optimizers.Adam(2e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(build_dataset(data, "train", True, 64, seed=1), steps_per_epoch=info.train_examples // 64,
              epochs=6, verbose=0)
    _, accuracy = model.evaluate(build_dataset(data, "val", False, 64), verbose=0)
    assert accuracy >= 0.9
