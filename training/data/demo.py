"""The demo data set: scikit-learn's bundled handwritten digits as TFRecord shards, built once.

`data.source: demo` trains on it with no download. The shards live in `<cache root>/digits-v1/`,
where the cache root is `data.data_dir` if set, else `$LAUNCH_DATA_CACHE`, else
`~/.cache/slurm-keras-train`. Put the cache root on storage every node sees, or let each node
build its own copy: the build takes a few seconds and is the same everywhere.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path

from training.data import DataError
from training.data.convert import LABELS_FILE, convert

DEMO_NAME = "digits-v1"  # bump the version when the content changes, so old caches are not reused
DEMO_SIZE = 32  # pixels; the source images are 8x8
DEMO_SHARDS = {"train": 8, "validation": 4}
DEMO_SEED = 0  # fixes the train/val split
CACHE_ENV = "LAUNCH_DATA_CACHE"
DEFAULT_CACHE = "~/.cache/slurm-keras-train"


def cache_root(data_dir: str = "") -> Path:
    """The folder that holds the demo set: `data_dir`, else $LAUNCH_DATA_CACHE, else ~/.cache/..."""
    return Path(data_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def _write_tree(src: Path) -> None:
    """Writes the digits as src/{train,val}/<digit>/<index>.png, 32x32, 80/20 stratified."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # Pixel values are 0..16; x16 spreads them over 0..255 (16 x 16 = 256 is clipped).
    pixels = np.clip(digits.images * 16, 0, 255).astype(np.uint8)
    train, val = train_test_split(np.arange(len(pixels)), test_size=0.2, stratify=digits.target,
                                  random_state=DEMO_SEED)
    for folder, indices in (("train", train), ("val", val)):
        for i in indices:
            class_dir = src / folder / str(digits.target[i])
            class_dir.mkdir(parents=True, exist_ok=True)
            image = Image.fromarray(pixels[i], "L").resize((DEMO_SIZE, DEMO_SIZE), Image.BILINEAR)
            # Lossless here; the converter makes the RGB JPEG (quality 95) the pipeline reads.
            image.save(class_dir / f"{i:04d}.png")


def prepare_demo(root: str | Path) -> Path:
    """Builds `root/digits-v1/` once and returns it; later calls return at once."""
    def build(folder: Path, out: Path) -> None:
        _write_tree(folder / "src")
        convert(folder / "src", out, DEMO_SHARDS, workers=1, log=lambda _: None)

    return build_once(root, DEMO_NAME, build)


def build_once(root: str | Path, name: str, build) -> Path:
    """Builds the data set `root/name/` with `build(scratch folder, output folder)` once and returns it.

    Safe when several processes call it together: they queue on a lock file, and the set is
    built in a temporary folder that is renamed into place only when complete. The rename also
    covers file systems where the lock is not shared between nodes: the loser discards its copy.
    """
    root = Path(root).expanduser()
    target = root / name
    if (target / LABELS_FILE).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if (target / LABELS_FILE).is_file():
            return target
        if target.exists():
            # A complete build always has labels.json, so this folder is not one of ours.
            raise DataError(f"{target} exists but holds no {LABELS_FILE}; remove it so the demo set "
                            "can be built there")
        scratch = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}.build-"))
        try:
            build(scratch, scratch / "out")
            try:
                os.rename(scratch / "out", target)
            except OSError:
                if not (target / LABELS_FILE).is_file():
                    raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return target
