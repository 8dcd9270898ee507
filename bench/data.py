"""Test images for the benchmarks: a class-folder tree of photo-sized JPEGs, and its shards.

The content imitates photographs closely enough for a JPEG decoder: smooth colour regions
(a coarse random colour field, upsampled), mid-frequency texture and sensor-like noise. At
500x375 and quality 90 a file is about 55 KB, the same order as an ImageNet training image,
so decode cost per image is realistic. Pure noise would make the decoder's entropy stage
dominate; flat colour would make decoding unrealistically cheap.

Layout under the work folder:
    jpeg/train/class_NN/img_NNNNN.jpg   the JPEGs (about 1 in 5 portrait)
    mixed/train/class_NN/...            the same JPEGs (hard links) plus PNGs, for the converter
    shards/train-NNNNN-of-NNNNN         the JPEG tree converted by the project converter
and, made by `prepare_input_sets` for the input-pipeline benchmark:
    shards_small/                       the JPEG tree stored downscaled (--max-side)
    photos2mp/jpeg/train/class_NN/...   2-megapixel (1600x1200) JPEGs, phone-camera size
    photos2mp/shards/, photos2mp/shards_small/   converted as they are, and downscaled

A photo taken at higher resolution shows the same scene in more pixels, so the texture's cells
grow with the image width (8 pixels at 500 wide, 25 at 1600); the 500x375 images are the same
bytes as before this rule.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from pathlib import Path

import numpy as np

from bench.common import log

TEXTURE_SIDE = 800  # the shared noise/texture tile each image takes a window of
JPEG_QUALITY = 90


def _texture(seed: int, width: int = 500) -> np.ndarray:
    from PIL import Image

    side = max(TEXTURE_SIDE, width + 100)
    cell = max(8, round(8 * width / 500))
    rng = np.random.default_rng(seed)
    noise = rng.integers(-10, 11, (side, side, 3), dtype=np.int16)
    coarse = rng.integers(0, 256, (side // cell, side // cell, 3), dtype=np.uint8)
    mid = np.asarray(Image.fromarray(coarse).resize((side, side), Image.BILINEAR), np.int16)
    return noise + (mid - 128) // 3


def _pixels(rng: np.random.Generator, texture: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    if rng.random() < 0.2:  # some portrait images, as in real photo collections
        width, height = height, width
    coarse = rng.integers(0, 256, (rng.integers(3, 7), rng.integers(4, 9), 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), np.int16)
    side = texture.shape[0]
    y, x = rng.integers(0, side - height), rng.integers(0, side - width)
    return np.clip(base + texture[y:y + height, x:x + width], 0, 255).astype(np.uint8)


def _write_images(task) -> int:
    """Writes one slice of the images; runs in a worker process."""
    from PIL import Image

    root, jobs, width, height, seed = task
    texture = _texture(seed, max(width, height))
    for index, class_name, fmt in jobs:
        rng = np.random.default_rng([seed, index])
        image = Image.fromarray(_pixels(rng, texture, width, height))
        folder = Path(root) / class_name
        if fmt == "png":
            image.save(folder / f"img_{index:05d}.png", "PNG", compress_level=6)
        else:
            image.save(folder / f"img_{index:05d}.jpg", "JPEG", quality=JPEG_QUALITY)
    return len(jobs)


def _generate(root: Path, jobs: list[tuple[int, str, str]], width: int, height: int, seed: int,
              workers: int) -> None:
    for class_name in sorted({c for _, c, _ in jobs}):
        (root / class_name).mkdir(parents=True, exist_ok=True)
    tasks = [(str(root), jobs[i::workers], width, height, seed) for i in range(workers)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.map(_write_images, tasks)


def prepare(work_dir: Path, images: int = 2000, classes: int = 10, pngs: int = 200,
            width: int = 500, height: int = 375, seed: int = 0, shards: int = 16) -> dict:
    """Makes (or reuses, when made with the same settings) the trees and the shards.

    Returns:
        {"jpeg": train folder of the JPEG tree, "jpeg_root": its parent (converter input),
         "mixed_root": JPEG + PNG tree for the converter, "shards": shard folder, "settings": ...}
    """
    work_dir = Path(work_dir)
    settings = {"images": images, "classes": classes, "pngs": pngs, "width": width, "height": height,
                "seed": seed, "shards": shards, "quality": JPEG_QUALITY}
    paths = {"jpeg_root": work_dir / "jpeg", "jpeg": work_dir / "jpeg" / "train",
             "mixed_root": work_dir / "mixed", "shards": work_dir / "shards"}
    marker = work_dir / "settings.json"
    if marker.is_file() and json.loads(marker.read_text()) == settings:
        return {**paths, "settings": settings}
    for path in ("jpeg_root", "mixed_root", "shards"):
        shutil.rmtree(paths[path], ignore_errors=True)
    marker.unlink(missing_ok=True)

    names = [f"class_{c:02d}" for c in range(classes)]
    workers = max(1, min(os.cpu_count() or 1, 4))
    log(f"generating {images} JPEGs ({width}x{height}, quality {JPEG_QUALITY}) and {pngs} PNGs in {work_dir}")
    _generate(paths["jpeg"], [(i, names[i % classes], "jpg") for i in range(images)], width, height,
              seed, workers)
    mixed = paths["mixed_root"] / "train"
    for jpeg in sorted(paths["jpeg"].rglob("*.jpg")):
        target = mixed / jpeg.parent.name / jpeg.name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(jpeg, target)  # same bytes, no second copy on disk
        except OSError:
            shutil.copyfile(jpeg, target)
    _generate(mixed, [(images + i, names[i % classes], "png") for i in range(pngs)], width, height,
              seed + 1, workers)

    from training.data.convert import convert

    log(f"converting the JPEG tree into {shards} shards")
    convert(paths["jpeg_root"], paths["shards"], shards={"train": shards}, log=lambda _: None)
    marker.write_text(json.dumps(settings))
    return {**paths, "settings": settings}



def _convert_once(src_root: Path, out: Path, shards: int, max_side: int | None) -> None:
    from training.data.convert import StoreSettings, convert

    if (out / "labels.json").is_file():
        return
    shutil.rmtree(out, ignore_errors=True)
    what = f"downscaled to max side {max_side}" if max_side else "as they are"
    log(f"converting {src_root} into {shards} shards, {what}")
    convert(src_root, out, shards={"train": shards}, log=lambda _: None,
            store=StoreSettings(max_side=max_side, jpeg_quality=JPEG_QUALITY))


def prepare_input_sets(work_dir: Path, images: int = 2000, photos_2mp: int = 300, max_side: int = 384,
                       seed: int = 0, shards: int = 16) -> dict:
    """`prepare` plus what the input-pipeline benchmark also reads (made once, then reused).

    Returns:
        {"small": {"jpeg", "shards", "shards_small"}, "2mp": {...}}: per photo size, the JPEG
        class-folder train tree, its shards as they are and stored with the longer side at
        most `max_side` (quality JPEG_QUALITY).
    """
    work_dir = Path(work_dir)
    base = prepare(work_dir, images=images, seed=seed, shards=shards)
    sets = {"small": {"jpeg": base["jpeg"], "shards": base["shards"],
                      "shards_small": work_dir / f"shards_max{max_side}"}}
    labels = sets["small"]["shards_small"] / "labels.json"
    if labels.is_file() and labels.stat().st_mtime < (work_dir / "settings.json").stat().st_mtime:
        labels.unlink()  # the JPEG tree was made again since: convert again
    _convert_once(base["jpeg_root"], sets["small"]["shards_small"], shards, max_side)

    root = work_dir / "photos2mp"
    settings = {"images": photos_2mp, "width": 1600, "height": 1200, "seed": seed, "quality": JPEG_QUALITY}
    marker = root / "settings.json"
    if not (marker.is_file() and json.loads(marker.read_text()) == settings):
        shutil.rmtree(root, ignore_errors=True)
        workers = max(1, min(os.cpu_count() or 1, 4))
        log(f"generating {photos_2mp} JPEGs (1600x1200, quality {JPEG_QUALITY}) in {root}")
        names = [f"class_{c:02d}" for c in range(10)]
        _generate(root / "jpeg" / "train", [(i, names[i % 10], "jpg") for i in range(photos_2mp)], 1600, 1200,
                  seed + 2, workers)
        marker.write_text(json.dumps(settings))
    sets["2mp"] = {"jpeg": root / "jpeg" / "train", "shards": root / "shards",
                   "shards_small": root / f"shards_max{max_side}"}
    _convert_once(root / "jpeg", sets["2mp"]["shards"], shards, None)
    _convert_once(root / "jpeg", sets["2mp"]["shards_small"], shards, max_side)
    return sets
