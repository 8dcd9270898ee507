"""The class-folder -> TFRecord converter, read back through the real pipeline."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.config import DataConfig
from training.data import DataError
from training.data.convert import convert, main

pytestmark = pytest.mark.xdist_group("convert-tree")  # one worker: its module fixture once

SIZE = 24
# Hostile names on purpose: spaces, quotes and ';' must survive into labels and file names.
CLASSES = ["plain", "with space", "it's \"quoted\"; rm"]


def picture(seed: int) -> np.ndarray:
    """A smooth, distinctive RGB image: JPEG keeps it within a few levels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    base, slope_y, slope_x = rng.uniform(30, 200, 3), rng.uniform(-40, 40, 3), rng.uniform(-40, 40, 3)
    return np.clip(base + yy[..., None] * slope_y + xx[..., None] * slope_x, 0, 255).astype(np.uint8)


def make_tree(root: Path) -> dict[str, tuple[int, np.ndarray]]:
    """Writes one file of every kind; returns {relative path: (label, expected RGB pixels)}."""
    expected = {}

    def put(rel: str, class_index: int, save, pixels: np.ndarray) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        save(path)
        # Labels follow the sorted class names, not the order they were written in.
        expected[rel] = (sorted(CLASSES).index(CLASSES[class_index]), pixels)

    rgb = picture(1)
    put(f"train/{CLASSES[0]}/rgb photo.jpg", 0, lambda p: Image.fromarray(rgb).save(p, quality=90), rgb)
    png = picture(2)
    put(f"train/{CLASSES[0]}/it's; a \"png\".png", 0, lambda p: Image.fromarray(png).save(p), png)
    gray = picture(3)[..., 0]
    put(f"train/{CLASSES[1]}/gray.png", 1, lambda p: Image.fromarray(gray, "L").save(p),
        np.repeat(gray[..., None], 3, axis=2))
    cmyk = picture(4)
    put(f"train/{CLASSES[1]}/cmyk.jpg", 1,
        lambda p: Image.fromarray(cmyk).convert("CMYK").save(p, quality=95), cmyk)
    rgba, alpha = picture(5), np.linspace(80, 255, SIZE * SIZE).reshape(SIZE, SIZE)
    on_white = (rgba * (alpha[..., None] / 255) + 255 * (1 - alpha[..., None] / 255)).round()
    put(f"train/{CLASSES[2]}/rgba.png", 2,
        lambda p: Image.fromarray(np.dstack([rgba, alpha.astype(np.uint8)]), "RGBA").save(p),
        on_white.astype(np.uint8))
    for i, name in enumerate(CLASSES):
        val = picture(10 + i)
        put(f"val/{name}/v{i}.jpg", i, lambda p, v=val: Image.fromarray(v).save(p, quality=95), val)

    bad = root / "train" / CLASSES[0]
    full = (root / f"train/{CLASSES[0]}/rgb photo.jpg").read_bytes()
    (bad / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (bad / "empty.jpg").write_bytes(b"")
    (root / "train" / CLASSES[1] / "notes.txt").write_text("not an image\n")
    (root / "train" / CLASSES[1] / ".DS_Store").write_bytes(b"\0\1")  # ignored, not even listed
    return expected


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("convert")
    expected = make_tree(root / "src")
    summary = convert(root / "src", root / "out", {"train": 2, "validation": 2}, workers=1, log=lambda _: None)
    return root, expected, summary


def _read_all(out: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    from training.data.pipeline import build_dataset

    data = DataConfig(source="tfrecord", data_dir=str(out), image_size=SIZE, val_crop_fraction=1.0)
    batches = list(build_dataset(data, split, training=False, batch_size=64))
    return (np.concatenate([b[0].numpy() for b in batches]), np.concatenate([b[1].numpy() for b in batches]))


def test_round_trip_keeps_labels_and_pixels(converted):
    root, expected, _ = converted
    for split, folder in (("train", "train/"), ("val", "val/")):
        images, labels = _read_all(root / "out", split)
        sources = [v for k, v in expected.items() if k.startswith(folder)]
        assert len(images) == len(sources)
        assert images.dtype == np.uint8 and images.shape[1:] == (SIZE, SIZE, 3)
        images = images.astype(np.float32)
        unmatched = list(range(len(sources)))
        for image, label in zip(images, labels):
            errors = [np.abs(image - sources[j][1]).mean() for j in unmatched]
            best = unmatched.pop(int(np.argmin(errors)))
            assert label == sources[best][0]
            assert min(errors) < 3.0, f"pixels differ by {min(errors):.1f} on average (JPEG allows ~1)"


def test_bad_files_are_skipped_counted_and_listed(converted):
    root, _, summary = converted
    listed = (root / "out" / "skipped.txt").read_text().splitlines()
    names = sorted(Path(line.split("\t")[0]).name for line in listed)
    assert names == ["empty.jpg", "notes.txt", "truncated.jpg"]
    assert len(summary.skipped) == 3 and "skipped 3 files" in summary.line()
    labels = json.loads((root / "out" / "labels.json").read_text())
    assert labels["classes"] == sorted(CLASSES)
    assert labels["counts"] == {"train": 5, "validation": 3}
    assert labels["label_offset"] == 0


def test_records_carry_imagenet_keys_and_keep_rgb_jpeg_bytes(converted):
    from training.keras_compat import tf

    root, _, _ = converted
    shards = sorted((root / "out").glob("train-*"))
    assert [p.name for p in shards] == ["train-00000-of-00002", "train-00001-of-00002"]
    records = {}
    for record in tf.data.TFRecordDataset([str(p) for p in shards]):
        feature = tf.train.Example.FromString(record.numpy()).features.feature
        records[feature["image/filename"].bytes_list.value[0].decode()] = feature
    assert len(records) == 5
    photo = records[f"{CLASSES[0]}/rgb photo.jpg"]
    source = root / "src/train" / CLASSES[0] / "rgb photo.jpg"
    assert photo["image/encoded"].bytes_list.value[0] == source.read_bytes()
    cmyk = records[f"{CLASSES[1]}/cmyk.jpg"]
    assert Image.open(io.BytesIO(cmyk["image/encoded"].bytes_list.value[0])).mode == "RGB"
    for feature in records.values():
        assert feature["image/format"].bytes_list.value == [b"JPEG"]
        assert feature["image/height"].int64_list.value == [SIZE] == feature["image/width"].int64_list.value
        label = feature["image/class/label"].int64_list.value[0]
        assert feature["image/class/text"].bytes_list.value[0].decode() == sorted(CLASSES)[label]


def test_examples_are_mixed_across_shards(tmp_path):
    for name in ("a", "b"):
        for i in range(8):
            path = tmp_path / "src/train" / name / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(picture(i)).save(path)
    convert(tmp_path / "src", tmp_path / "out", {"train": 2}, workers=2, log=lambda _: None)
    from training.keras_compat import tf

    for shard in sorted((tmp_path / "out").glob("train-*")):
        labels = {tf.train.Example.FromString(r.numpy()).features.feature["image/class/label"].int64_list.value[0]
                  for r in tf.data.TFRecordDataset(str(shard))}
        assert labels == {0, 1}, f"{shard.name} holds one class only: the shuffle did not mix"


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture(0)).save(path)


@pytest.mark.parametrize("layout, message", [
    ({}, "does not exist"),
    ({"val/a/x.png": 1}, "has no train/ folder"),
    ({"train/x.png": 1}, "holds no class sub-folders"),
    ({"train/a/x.png": 1, "train/b/readme.txt": 0}, "holds no image files"),
    ({"train/a/x.png": 1, "val/a/y.png": 1, "val/zebra/z.png": 1}, "classes that train/ lacks: 'zebra'"),
])
def test_mislaid_folders_fail_with_one_clear_line(tmp_path, capsys, layout, message):
    src = tmp_path / "src"
    for rel, is_image in layout.items():
        if is_image:
            _image(src / rel)
        else:
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_text("x")
    with pytest.raises(DataError, match=message.replace("'", ".")):
        convert(src, tmp_path / "out", workers=1, log=lambda _: None)
    assert main([str(src), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out" / "labels.json").exists()


def test_cli_exit_status_and_non_empty_output(tmp_path):
    _image(tmp_path / "src/train/a/x.png")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old").write_text("x")
    proc = subprocess.run([sys.executable, "-m", "training.data.convert", str(tmp_path / "src"),
                           str(tmp_path / "out")], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: output folder") and "not empty" in proc.stderr


# Stored downscaled: what the stored pixels may differ from Pillow's own Lanczos resize of the
# original by, as a mean absolute difference per channel on the 0..255 scale. The draft
# (DCT-scaled) decode before the resize and the JPEG re-encode at quality 90 each cost about one
# level on photo-like content (measured 1.4 / 0.8 / 1.6 for R / G / B).
DOWNSCALE_TOLERANCE = 3.0


def _photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Smooth colour regions plus mild texture: photo-like for a JPEG codec and for a resize."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), np.int16)
    return np.clip(base + rng.integers(-6, 7, (height, width, 3)), 0, 255).astype(np.uint8)


def test_max_side_stores_a_downscaled_copy_close_to_a_pillow_resize(tmp_path):
    from training.data.convert import StoreSettings
    from training.keras_compat import tf

    big = tmp_path / "src/train/a/big.jpg"
    big.parent.mkdir(parents=True)
    Image.fromarray(_photo(2000, 1500)).save(big, quality=92)
    small = tmp_path / "src/train/a/small.jpg"
    Image.fromarray(_photo(400, 300, seed=1)).save(small, quality=92)
    convert(tmp_path / "src", tmp_path / "out", {"train": 1}, workers=1, log=lambda _: None,
            store=StoreSettings(max_side=512, jpeg_quality=90))
    records = {}
    for record in tf.data.TFRecordDataset(str(tmp_path / "out/train-00000-of-00001")):
        feature = tf.train.Example.FromString(record.numpy()).features.feature
        records[feature["image/filename"].bytes_list.value[0].decode()] = feature
    stored = records["a/big.jpg"]
    pixels = tf.io.decode_jpeg(stored["image/encoded"].bytes_list.value[0]).numpy()
    assert pixels.shape == (384, 512, 3)
    assert (stored["image/height"].int64_list.value[0], stored["image/width"].int64_list.value[0]) == (384, 512)
    with Image.open(big) as original:
        expected = np.asarray(original.convert("RGB").resize((512, 384), Image.LANCZOS), np.float32)
    error = np.abs(pixels - expected).mean(axis=(0, 1))
    assert error.max() <= DOWNSCALE_TOLERANCE, f"mean abs difference per channel {error}"
    # Within the bound already: the same bytes, not re-encoded.
    assert records["a/small.jpg"]["image/encoded"].bytes_list.value[0] == small.read_bytes()
    labels = json.loads((tmp_path / "out/labels.json").read_text())
    assert labels["stored"] == {"max_side": 512, "min_side": None, "jpeg_quality": 90, "resize_filter": "lanczos"}
    assert labels["shards"] == {"train-00000-of-00001": {
        "bytes": (tmp_path / "out/train-00000-of-00001").stat().st_size, "records": 2}}


def test_min_side_bounds_the_shorter_side_and_never_upscales(tmp_path):
    from training.data.convert import StoreSettings, encode_image

    path = tmp_path / "wide.png"
    Image.fromarray(_photo(900, 300)).save(path)
    _, height, width = encode_image(path, StoreSettings(min_side=256))
    assert (width, height) == (768, 256)
    _, height, width = encode_image(path, StoreSettings(min_side=256, max_side=600))
    assert (width, height) == (600, 200)
    _, height, width = encode_image(path, StoreSettings(min_side=1000, max_side=1000))
    assert (width, height) == (900, 300)  # a PNG is re-encoded but never enlarged


def test_cli_passes_the_store_settings(tmp_path):
    path = tmp_path / "src/train/a/big.jpg"
    path.parent.mkdir(parents=True)
    Image.fromarray(_photo(640, 480)).save(path)
    assert main([str(tmp_path / "src"), str(tmp_path / "out"), "--max-side", "320", "--jpeg-quality", "80",
                 "--workers", "1"]) == 0
    labels = json.loads((tmp_path / "out/labels.json").read_text())
    assert labels["stored"]["max_side"] == 320 and labels["stored"]["jpeg_quality"] == 80
    with pytest.raises(SystemExit):
        main([str(tmp_path / "src"), str(tmp_path / "out2"), "--jpeg-quality", "0"])


def test_shard_counts_follow_the_datas_size(tmp_path, monkeypatch):
    from training.data import convert as converter

    files = []
    for i in range(96):
        files.append(tmp_path / f"{i}.jpg")
        files[-1].write_bytes(b"\0" * 1024)
    assert converter.shards_by_size(files) == converter.READERS == 8  # 96 KB: one shard per reader
    assert converter.shards_by_size(files, readers=1) == 1
    assert converter.shards_by_size(files[:5]) == 5  # never more shards than images
    monkeypatch.setattr(converter, "SHARD_BYTES", 10 * 1024)  # as if 96 KB were 96 x 150 MB / 10
    assert converter.shards_by_size(files, readers=1) == 10
    assert converter.shards_by_size(files, readers=16) == 16


def test_96_images_make_a_shard_per_reader_and_explicit_counts_win(tmp_path, capsys):
    for i in range(96):
        path = tmp_path / "src/train" / ("a", "b")[i % 2] / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(picture(i)).save(path)
    for i in range(6):
        _image(tmp_path / "src/val" / ("a", "b")[i % 2] / f"{i}.png")
    assert main([str(tmp_path / "src"), str(tmp_path / "sized"), "--workers", "1"]) == 0
    assert len(list((tmp_path / "sized").glob("train-*"))) == 8  # was 96: one per image, up to 128
    assert len(list((tmp_path / "sized").glob("validation-*"))) == 6  # at most one per image
    assert main([str(tmp_path / "src"), str(tmp_path / "two"), "--workers", "1", "--readers", "2"]) == 0
    assert len(list((tmp_path / "two").glob("train-*"))) == 2
    assert main([str(tmp_path / "src"), str(tmp_path / "given"), "--workers", "1", "--shards-train", "3",
                 "--shards-val", "1"]) == 0
    assert sorted(p.name for p in (tmp_path / "given").glob("*-of-*")) == [
        "train-00000-of-00003", "train-00001-of-00003", "train-00002-of-00003", "validation-00000-of-00001"]
    with pytest.raises(SystemExit):
        main([str(tmp_path / "src"), str(tmp_path / "none"), "--readers", "0"])
    assert "shard, reader and worker counts must be at least 1" in capsys.readouterr().err
