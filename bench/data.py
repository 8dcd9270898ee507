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


def _texture(seed: int) -> np.ndarray:
    from PIL import Image

    rng = np.random.default_rng(seed)
    noise = rng.integers(-10, 11, (TEXTURE_SIDE, TEXTURE_SIDE, 3), dtype=np.int16)
    coarse = rng.integers(0, 256, (TEXTURE_SIDE // 8, TEXTURE_SIDE // 8, 3), dtype=np.uint8)
    mid = np.asarray(Image.fromarray(coarse).resize((TEXTURE_SIDE, TEXTURE_SIDE), Image.BILINEAR), np.int16)
    return noise + (mid - 128) // 3


def _pixels(rng: np.random.Generator, texture: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    if rng.random() < 0.2:  # some portrait images, as in real photo collections
        width, height = height, width
    coarse = rng.integers(0, 256, (rng.integers(3, 7), rng.integers(4, 9), 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), np.int16)
    y, x = rng.integers(0, TEXTURE_SIDE - height), rng.integers(0, TEXTURE_SIDE - width)
    return np.clip(base + texture[y:y + height, x:x + width], 0, 255).astype(np.uint8)


def _write_images(task) -> int:
    """Writes one slice of the images; runs in a worker process."""
    from PIL import Image

    root, jobs, width, height, seed = task
    texture = _texture(seed)
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

