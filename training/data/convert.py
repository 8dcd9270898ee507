"""Class-folder image tree -> TFRecord shards with the standard ImageNet feature keys.

    python -m training.data.convert SRC OUT [--shards-train N] [--shards-val N] [--shards-test N]
        [--readers R] [--workers N] [--max-side N] [--min-side N] [--jpeg-quality Q]

SRC holds `train/<class>/<image>` and optionally `val/<class>/...` (or `validation/`) and
`test/<class>/...`. OUT receives `{split}-{i:05d}-of-{n:05d}` shards (`val` becomes
`validation`), `skipped.txt` and, written last, `labels.json`: the output is complete only
once `labels.json` exists. Without --shards-*, a split's shard count follows its size
(`shards_by_size`: about 150 MB a shard, at least --readers, at most one per image). Labels are 0-based indices into the sorted training class names.
`labels.json` also holds the manifest `"shards": {file name: {"bytes": size, "records": n}}`,
which `launch` (one stat per shard) and the pipeline (counting as it reads) check shards against.

Worker processes decode every file with Pillow and never load TensorFlow; the calling process
writes the records. RGB JPEGs are kept byte for byte; any other readable image (PNG, grayscale,
CMYK, RGBA, ...) is re-encoded as an RGB JPEG, transparency composited onto white.
`--max-side N` / `--min-side N` store images downscaled (the usual ImageNet-training practice:
a random-resized crop to 224 needs no 2-megapixel source, and decoding is the input pipeline's
cost): the longer / shorter side at most N, aspect kept, never upscaled; an RGB JPEG already
within the bound keeps its bytes. Re-encoded images use `--jpeg-quality`. The settings are
recorded in labels.json under "stored".
Unreadable, empty and non-image files, files outside class folders and folders beside the splits
(dev/, extra/) are skipped, counted in the log and listed in skipped.txt.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import io
import itertools
import math
import multiprocessing
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from training.data import DataError, convert_parts
from training.data.records import (LABELS_FILE, SKIPPED_FILE, check_output_folder, run_converter, skipped_line,
                                   write_labels, write_shard, write_skipped)
# Source folder names -> split (shard prefix) names; ImageNet shards call the val split so.
SPLIT_FOLDERS = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
JPEG_QUALITY = 95  # re-encoded images only; high so small images keep their detail
# Lanczos: the sharpest of Pillow's filters without ringing that matters at photo content.
RESIZE_FILTER = "lanczos"
SHUFFLE_SEED = 0  # fixed: the same tree always gives the same shards
SHARD_BYTES = 150 << 20  # a shard's aim without --shards-*: 100-200 MB reads well, in few files
READERS = 8  # default --readers: training processes reading a split at once, a shard each at least
SIZE_SAMPLE = 1000  # files whose size is read to estimate a split's bytes


class _Skip(Exception):
    """A file that is not kept; the message is the reason written to skipped.txt."""


@dataclass
class ConvertSummary:
    """What a conversion wrote."""

    out_dir: Path
    classes: list[str]
    counts: dict[str, int]  # split -> examples written
    shards: dict[str, int]  # split -> shard files written
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def line(self) -> str:
        """One line for the terminal."""
        parts = ", ".join(f"{s} {self.counts[s]} in {self.shards[s]} shards" for s in self.counts)
        return (f"converted {len(self.classes)} classes ({parts}) into {self.out_dir}; skipped "
                f"{len(self.skipped)} files, listed in {self.out_dir / SKIPPED_FILE}")


def _visible(name: str) -> bool:
    # Dot files (.DS_Store, editor swap files) are never data; ignoring them keeps skipped.txt useful.
    return not name.startswith(".")


def _scan_split(split_dir: Path, classes: list[str] | None):
    """Lists one split folder.

    Returns:
        (class names found, [(path, class name, name relative to the split)], skipped).
    """
    entries = sorted(p for p in split_dir.iterdir() if _visible(p.name))
    class_dirs = [p for p in entries if p.is_dir()]
    skipped = [(str(p), "not inside a class folder") for p in entries if not p.is_dir()]
    if not class_dirs:
        raise DataError(f"{split_dir} holds no class sub-folders; expected {split_dir}/<class>/<image>")
    if classes is not None:
        unknown = [d.name for d in class_dirs if d.name not in classes]
        if unknown:
            raise DataError(f"{split_dir} has classes that train/ lacks: {', '.join(map(repr, unknown))}; "
                            "every class needs training images")
    files = []
    for class_dir in class_dirs:
        found = sorted(p for p in class_dir.rglob("*") if p.is_file()
                       and all(_visible(q) for q in p.relative_to(class_dir).parts))
        if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in found):
            raise DataError(f"class folder {class_dir} holds no image files ({', '.join(IMAGE_SUFFIXES)}); "
                            "add images or remove the folder")
        # Every file is offered to the decoder, so an image without a suffix is still kept.
        files += [(p, class_dir.name, p.relative_to(split_dir).as_posix()) for p in found]
    return [d.name for d in class_dirs], files, skipped


def _split_folders(src: Path) -> tuple[dict[str, Path], list[tuple[str, str]]]:
    """{split: its folder} and the folders beside them, which are not read."""
    if not src.is_dir():
        raise DataError(f"source folder {src} does not exist; pass the folder that holds train/ (and val/, test/)")
    found = {}
    for folder, split in SPLIT_FOLDERS.items():
        if (src / folder).is_dir():
            if split in found:
                raise DataError(f"{src} has both {found[split].name}/ and {folder}/; keep one of them")
            found[split] = src / folder
    if "train" not in found:
        raise DataError(f"{src} has no train/ folder; expected {src}/train/<class>/<image> "
                        "(and optionally val/<class>/..., test/<class>/...)")
    # A dev/ or extra/ folder would otherwise be left out unseen. Files beside the splits are
    # the data set's notes (a README, a vocabulary), not images, and are not listed.
    others = [(str(p), f"not a split folder ({', '.join(SPLIT_FOLDERS)})") for p in sorted(src.iterdir())
              if p.is_dir() and _visible(p.name) and p.name not in SPLIT_FOLDERS]
    return found, others


@dataclass(frozen=True)
class StoreSettings:
    """How images are stored: the size bound and the quality of re-encoded JPEGs."""

    max_side: int | None = None  # longer side at most this many pixels; None = no bound
    min_side: int | None = None  # shorter side at most this many pixels; None = no bound
    jpeg_quality: int = JPEG_QUALITY  # 1-100, for every image that is re-encoded

    def target(self, width: int, height: int) -> tuple[int, int] | None:
        """(width, height) to store, or None when the image is within the bound already."""
        scale = 1.0
        if self.max_side:
            scale = min(scale, self.max_side / max(width, height))
        if self.min_side:
            scale = min(scale, self.min_side / min(width, height))
        if scale >= 1.0:
            return None
        return max(1, round(width * scale)), max(1, round(height * scale))

    def record(self) -> dict:
        """What labels.json says about the stored images."""
        return {"max_side": self.max_side, "min_side": self.min_side, "jpeg_quality": self.jpeg_quality,
                "resize_filter": RESIZE_FILTER}


def encode_image(path: str | Path, store: StoreSettings = StoreSettings()) -> tuple[bytes, int, int]:
    """Returns (JPEG bytes, height, width) as stored for one file; raises _Skip when it is not kept."""
    from PIL import Image

    data = Path(path).read_bytes()
    if not data:
        raise _Skip("empty file")
    try:
        with Image.open(io.BytesIO(data)) as img:
            target = store.target(img.width, img.height)
            if target is not None and img.format in ("JPEG", "MPO"):
                # Lets libjpeg decode at 1/2, 1/4 or 1/8 scale while staying at least twice the
                # target size, so the Lanczos pass after it still decides the pixels.
                img.draft(img.mode, (2 * target[0], 2 * target[1]))
            img.load()  # decodes every pixel, so a truncated file fails here and not in training
            height, width = img.height, img.width
            # MPO is the multi-picture JPEG some cameras write; its bytes decode as a plain JPEG.
            if target is None and img.format in ("JPEG", "MPO") and img.mode == "RGB":
                return data, height, width
            rgb = _to_rgb(img)
    except Image.UnidentifiedImageError:
        raise _Skip("not an image Pillow can read") from None
    except Exception as err:  # Pillow raises many types for broken files; any of them means skip
        raise _Skip(f"not a readable image ({type(err).__name__}: {err})") from None
    if target is not None:
        rgb = rgb.resize(target, Image.LANCZOS)
        width, height = target
    buf = io.BytesIO()
    rgb.save(buf, "JPEG", quality=store.jpeg_quality)
    return buf.getvalue(), height, width


def _to_rgb(img):
    from PIL import Image

    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Dropping alpha would show whatever colour transparent pixels happen to hold; white
        # is what a viewer shows.
        rgba = img.convert("RGBA")
        rgb = Image.new("RGB", rgba.size, (255, 255, 255))
        rgb.paste(rgba, mask=rgba.getchannel("A"))
        return rgb
    return img.convert("RGB")


def _encode_shard(task):
    """Decodes one shard's files and returns what to write. Runs in a worker, without TensorFlow."""
    split, index, num_shards, examples, store = task
    kept, skipped = [], []
    for file_path, label, class_name, rel_name in examples:
        try:
            encoded, height, width = encode_image(file_path, store)
        except _Skip as err:
            skipped.append((file_path, str(err)))
            continue
        except OSError as err:  # unreadable file (permissions, vanished)
            skipped.append((file_path, f"cannot read ({err.strerror or err})"))
            continue
        kept.append((encoded, height, width, label, class_name, rel_name))
    return split, index, num_shards, kept, skipped


def _write_shard(out_dir: Path, split: str, index: int, num_shards: int, kept: list) -> tuple[str, dict]:
    """One shard with the standard ImageNet feature keys; see records.write_shard."""
    return write_shard(out_dir, split, index, num_shards, (
        {"image/encoded": encoded, "image/format": b"JPEG", "image/class/label": label,
         "image/class/text": class_name.encode("utf-8", "surrogateescape"), "image/height": height,
         "image/width": width, "image/filename": rel_name.encode("utf-8", "surrogateescape")}
        for encoded, height, width, label, class_name, rel_name in kept))


def _bounded(pool, tasks: list, window: int):
    """Yields results as they finish with at most `window` shards in flight: an ImageNet shard
    holds ~100 MB of images, so queueing every result would hold the whole data set in memory."""
    queue = iter(tasks)
    pending = {pool.submit(_encode_shard, task) for task in itertools.islice(queue, window)}
    while pending:
        done, pending = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
        for future in done:
            yield future.result()
            pending |= {pool.submit(_encode_shard, task) for task in itertools.islice(queue, 1)}


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores SLURM gave us, not the whole node's
    except AttributeError:
        return os.cpu_count() or 1


def shards_by_size(paths: list[Path], readers: int = READERS) -> int:
    """A split's shard count when none is given: about SHARD_BYTES each, from the source files'
    sizes (a fixed sample's mean times their number: one stat per file would be slow on a
    parallel file system), at least `readers` (each training process reads whole shards), never
    more than the files."""
    if not paths:
        return 1
    sample = random.Random(SHUFFLE_SEED).sample(paths, min(len(paths), SIZE_SAMPLE))  # same in every array task
    total = sum(os.path.getsize(p) for p in sample) / len(sample) * len(paths)
    return max(1, min(len(paths), max(readers, math.ceil(total / SHARD_BYTES))))


def convert(src: str | Path, out: str | Path, shards: dict[str, int] | None = None,
            workers: int | None = None, seed: int = SHUFFLE_SEED, log=print,
            store: StoreSettings = StoreSettings(), part: tuple[int, int] | None = None,
            readers: int = READERS) -> ConvertSummary:
    """Converts a class-folder tree into TFRecord shards.

    Args:
        src: folder holding train/ and optionally val/ (or validation/) and test/.
        out: new or empty folder for the shards.
        shards: split -> number of shards; a split missing here gets `shards_by_size`. A split
            with fewer examples than shards gets one shard per example.
        workers: decoding processes, one shard per task; None = every core this process may
            use; 1 = decode in this process.
        seed: shuffles examples across shards so each shard mixes classes.
        log: called with progress lines; pass `lambda _: None` for silence.
        store: size bound and JPEG quality of stored images (default: as they are).
        part: (task, tasks): write only this array task's slice of the shards and its part record;
            the last task to finish writes labels.json (training/data/convert_parts.py).
        readers: training processes that will read the shards (`shards_by_size`).

    Raises:
        DataError: mis-laid source folders or a non-empty output folder.
    """
    src, out = Path(src), Path(out)
    split_dirs, skipped = _split_folders(src)
    if part is None:  # array tasks write into the folder the others are filling
        check_output_folder(out)
    classes, train_files, extra = _scan_split(split_dirs["train"], None)
    skipped += extra
    label_of = {name: i for i, name in enumerate(classes)}
    per_split = {"train": train_files}
    for split in ("validation", "test"):
        if split in split_dirs:
            _, per_split[split], extra = _scan_split(split_dirs[split], classes)
            skipped += extra

    tasks, num_shards = [], {}
    for split, files in per_split.items():
        examples = [(str(p), label_of[c], c, rel) for p, c, rel in files]
        random.Random(seed).shuffle(examples)
        wanted = (shards or {}).get(split) or shards_by_size([p for p, _, _ in files], readers)
        n = num_shards[split] = max(1, min(wanted, len(examples)))
        tasks += [(split, i, n, examples[i::n], store) for i in range(n)]
    expected = [f"{split}-{i:05d}-of-{n:05d}" for split, i, n, _, _ in tasks]
    if part is not None:  # an array task: its slice of the same plan (same scan, same seed)
        tasks = tasks[slice(*convert_parts.bounds(len(tasks), *part))]

    out.mkdir(parents=True, exist_ok=True)
    counts = {split: 0 for split in per_split}
    manifest = {}
    workers = max(1, min(workers or _default_workers(), len(tasks)))
    log(f"converting {', '.join(f'{s}: {len(f)} files' for s, f in per_split.items())} "
        f"with {workers} workers into {out}")
    with contextlib.ExitStack() as stack:
        if workers == 1:
            results = map(_encode_shard, tasks)
        else:
            # Workers only decode (the expensive part) and never load TensorFlow, so they start
            # fast; this process writes. spawn, not fork: the caller may have TensorFlow's
            # threads running. An executor, not a Pool: a dead worker fails loudly, not a hang.
            pool = stack.enter_context(concurrent.futures.ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn")))
            results = _bounded(pool, tasks, 2 * workers)
        for done, (split, index, n, kept, bad) in enumerate(results, 1):
            name, manifest[name] = _write_shard(out, split, index, n, kept)
            counts[split] += len(kept)
            skipped += bad
            if done % max(1, len(tasks) // 10) == 0 or done == len(tasks):
                log(f"  {done}/{len(tasks)} shards written")
    skipped.sort()
    if part is not None:
        convert_parts.write_part(out, *part, {
            "classes": classes, "counts": counts, "skipped": skipped, "stored": store.record(),
            "shards": manifest, "expected": expected})
        log(f"this task: {skipped_line(skipped, out / SKIPPED_FILE)} once every task has written")
        if convert_parts.finalize(out, log):
            log(f"every task has written its shards: wrote {out / LABELS_FILE}")
        return ConvertSummary(out, classes, counts, num_shards, skipped)
    write_skipped(out, skipped)
    log(skipped_line(skipped, out / SKIPPED_FILE))
    write_labels(out, classes, counts, len(skipped), manifest, stored=store.record())
    return ConvertSummary(out, classes, counts, num_shards, skipped)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.data.convert",
        description="Convert SRC/{train,val,test}/<class>/<image> into TFRecord shards in OUT.")
    parser.add_argument("src", nargs="?", help="folder holding train/ and optionally val/ and test/")
    parser.add_argument("out", nargs="?", help="new or empty output folder")
    parser.add_argument("--array-tasks", type=int, default=None, metavar="K",
                        help="one of K array tasks: write only this task's slice of the shards")
    parser.add_argument("--task", type=int, default=None, metavar="I",
                        help="with --array-tasks: this task's index (default: $SLURM_ARRAY_TASK_ID)")
    parser.add_argument("--finalize", metavar="OUT", default=None,
                        help="write labels.json of an array conversion whose tasks have all ended")
    for split in ("train", "val", "test"):
        parser.add_argument(f"--shards-{split}", type=int, default=None,
                            help=f"{split} shards (default: from the data's size, ~150 MB each)")
    parser.add_argument("--readers", type=int, default=READERS,
                        help=f"training processes that will read the shards: each split gets at least as "
                             f"many shards, if it has the images (default {READERS})")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all usable cores)")
    parser.add_argument("--max-side", type=int, default=None,
                        help="store images with the longer side at most N pixels (downscaled, aspect kept)")
    parser.add_argument("--min-side", type=int, default=None,
                        help="store images with the shorter side at most N pixels (downscaled, aspect kept)")
    parser.add_argument("--jpeg-quality", type=int, default=JPEG_QUALITY,
                        help=f"quality of re-encoded JPEGs, 1-100 (default {JPEG_QUALITY})")
    args = parser.parse_args(argv)
    if args.finalize:
        try:
            done = convert_parts.finalize(Path(args.finalize), lambda text: print(text, file=sys.stderr))
        except DataError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"{args.finalize}: " + ("complete" if done else "some array tasks have not finished yet"))
        return 0 if done else 1
    if not (args.src and args.out):
        parser.error("SRC and OUT are required (or --finalize OUT)")
    part = None
    if args.array_tasks is not None:
        task = args.task if args.task is not None else int(os.environ.get("SLURM_ARRAY_TASK_ID", -1))
        if not 0 <= task < args.array_tasks:
            parser.error(f"--task {task}: expected 0 to {args.array_tasks - 1} (or run as an array task)")
        part = (task, args.array_tasks)
    counts = (args.shards_train, args.shards_val, args.shards_test, args.workers, args.readers)
    if min(n for n in counts if n is not None) < 1:
        parser.error("shard, reader and worker counts must be at least 1")
    if min(args.max_side or 1, args.min_side or 1) < 1:
        parser.error("--max-side and --min-side must be at least 1 pixel")
    if not 1 <= args.jpeg_quality <= 100:
        parser.error("--jpeg-quality must be between 1 and 100")
    store = StoreSettings(args.max_side, args.min_side, args.jpeg_quality)
    shards = {"train": args.shards_train, "validation": args.shards_val, "test": args.shards_test}
    return run_converter(lambda log: convert(args.src, args.out, shards, args.workers, log=log, store=store,
                                             part=part, readers=args.readers))


if __name__ == "__main__":
    sys.exit(main())
