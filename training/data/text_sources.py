"""Labelled texts from a class-folder tree, a CSV file or a JSONL file; no TensorFlow.

    folder  SRC/{train,val|validation,test}/<class>/*.txt (suffix in any case). An unlabelled
            folder (unsup/, as the large movie-review set has) is not a class and is ignored,
            as are dot files (.DS_Store) and files beside the splits (its README, imdb.vocab);
            folders beside the splits, files outside class folders or without .txt are
            skipped and listed.
    csv     a header row naming the text and the label column (data.text_column,
            data.label_column); quoted fields may hold commas and newlines.
    jsonl   one JSON object per line with those two keys.

Files are UTF-8, with or without a byte-order mark. Texts that are not valid UTF-8 are skipped
and listed ("not UTF-8"), never guessed at; so are texts holding NUL bytes (binary files, UTF-16),
empty texts and labels outside the classes. `TextSplits.skipped` lists every one; the converter
and a run reading the source directly write it to skipped.txt and log the count.
The classes are `classes` when given, else the sorted labels of the training split. A source
without a validation split (csv, jsonl, a folder with train/ only) gets one: `val_fraction` of
each class, drawn with a fixed seed, named "validation".
"""
from __future__ import annotations

import concurrent.futures
import csv
import io
import json
import multiprocessing
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from training.data import DataError

SPLIT_FOLDERS = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}
UNLABELLED_FOLDERS = ("unsup",)  # folders of texts without a label: never a class
TEXT_SUFFIX = ".txt"
SPLIT_SEED = 0  # fixed: the same source always gives the same validation split
PARALLEL_MIN_FILES = 1000  # below this, starting worker processes costs more than reading the files
# Bytes below 0x80 are valid UTF-8, so a binary file or UTF-16 text can decode; no text holds NUL.
BINARY = "holds NUL bytes (binary, or UTF-16)"


@dataclass
class TextSplits:
    """Texts per split (train, validation, test) as (text, 0-based label) pairs."""

    classes: list[str]
    splits: dict[str, list[tuple[str, int]]]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (where, reason)


def detect_source(path: str | Path) -> str:
    """folder, csv or jsonl from what `path` is."""
    path = Path(path)
    if path.is_dir():
        return "folder"
    suffix = path.suffix.lower()
    if suffix in (".csv", ".jsonl"):
        return suffix[1:]
    if not path.exists():
        raise DataError(f"text source {path} does not exist; pass a class-folder root, a .csv or a .jsonl file")
    raise DataError(f"text source {path} is neither a folder nor a .csv / .jsonl file; name the format "
                    "with --source (or data.source)")


def decode(data: bytes) -> str | None:
    """UTF-8 text without a byte-order mark, or None when the bytes are not UTF-8."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None


def _read_text_file(path: str) -> tuple[str, str | None, str]:
    """(path, text or None, reason when None). Runs in worker processes."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        return path, None, f"cannot read ({err.strerror or err})"
    text = decode(data)
    if text is None:
        return path, None, "not UTF-8"
    if not text.strip():
        return path, None, "empty text"
    if "\x00" in text:
        return path, None, BINARY
    return path, text, ""


def _scan_folder(src: Path) -> tuple[dict[str, list[tuple[str, str]]], list[tuple[str, str]]]:
    """{split: [(file, class folder name)]} and the files skipped while listing."""
    if not src.is_dir():
        raise DataError(f"source folder {src} does not exist; pass the folder that holds train/<class>/*.txt")
    found = {}
    # A dev/ or extra/ folder would otherwise be left out unseen; files beside the splits are the
    # data set's notes (aclImdb's README, imdb.vocab) and are not listed.
    skipped = [(str(p), f"not a split folder ({', '.join(SPLIT_FOLDERS)})") for p in sorted(src.iterdir())
               if p.is_dir() and not p.name.startswith(".") and p.name not in SPLIT_FOLDERS]
    for folder, split in SPLIT_FOLDERS.items():
        split_dir = src / folder
        if not split_dir.is_dir():
            continue
        if split in found:
            raise DataError(f"{src} has both val/ and validation/; keep one of them")
        files = []
        for entry in sorted(split_dir.iterdir()):
            if entry.name.startswith(".") or entry.name in UNLABELLED_FOLDERS:
                continue
            if not entry.is_dir():
                skipped.append((str(entry), "not inside a class folder"))
                continue
            for path in sorted(entry.rglob("*")):
                if not path.is_file() or any(p.startswith(".") for p in path.relative_to(entry).parts):
                    continue
                if path.suffix.lower() != TEXT_SUFFIX:
                    skipped.append((str(path), f"not a {TEXT_SUFFIX} file"))
                else:
                    files.append((str(path), entry.name))
        found[split] = files
    if "train" not in found:
        raise DataError(f"{src} has no train/ folder; expected {src}/train/<class>/*.txt "
                        "(and optionally val/ or test/)")
    return found, skipped


def _read_folder(src: Path, workers: int) -> tuple[dict[str, list[tuple[str, str, str]]], list]:
    """{split: [(where, text, label name)]} for a class-folder tree; files read by `workers` processes."""
    listed, skipped = _scan_folder(src)
    paths = [path for files in listed.values() for path, _ in files]
    if workers > 1 and len(paths) >= PARALLEL_MIN_FILES:
        # spawn, not fork: the caller may run TensorFlow's threads. Reading is I/O and decoding.
        with concurrent.futures.ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            read = dict((p, (t, r)) for p, t, r in pool.map(_read_text_file, paths, chunksize=256))
    else:
        read = {p: (t, r) for p, t, r in map(_read_text_file, paths)}
    out = {}
    for split, files in listed.items():
        rows = []
        for path, label in files:
            text, reason = read[path]
            if text is None:
                skipped.append((path, reason))
            else:
                rows.append((path, text, label))
        out[split] = rows
    return out, skipped


def _table_rows(path: Path, source: str, text_column: str, label_column: str):
    """Yields (where, text, label, problem) per record of a CSV or JSONL file; problem "" = readable."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read {path} ({err.strerror or err}); check the path and its permissions") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    # surrogateescape keeps bytes that are not UTF-8 visible per record, so only those are skipped.
    text = data.decode("utf-8", "surrogateescape")
    if source == "csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        columns = reader.fieldnames or []
        for key, name in ((text_column, "data.text_column"), (label_column, "data.label_column")):
            if key not in columns:
                raise DataError(f"{path} has no column {key!r} (its columns: {', '.join(columns) or 'none'}); "
                                f"set {name} (--text-column / --label-column)")
        for row in reader:
            yield f"{path}:{reader.line_num}", row.get(text_column), row.get(label_column), ""
        return
    seen_keys = False
    # "\n" only: splitlines() also breaks at U+2028, U+0085 and \x1c-\x1e, which JSON strings may
    # hold raw, so one record would be dropped as two broken lines with the numbers after it off.
    for number, line in enumerate(text.split("\n"), 1):
        where = f"{path}:{number}"
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            yield where, None, None, "not UTF-8" if _has_surrogates(line) else "not valid JSON"
            continue
        if not isinstance(record, dict):
            yield where, None, None, "not a JSON object"
            continue
        seen_keys = seen_keys or (text_column in record and label_column in record)
        label = record.get(label_column)
        text = record.get(text_column)
        yield where, None if text is None else str(text), None if label is None else str(label), ""
    if not seen_keys:
        raise DataError(f"{path} has no record with both keys {text_column!r} and {label_column!r}; set "
                        "data.text_column and data.label_column (--text-column / --label-column)")


def _read_table(path: Path, source: str, text_column: str, label_column: str):
    rows, skipped = [], []
    for where, text, label, problem in _table_rows(path, source, text_column, label_column):
        if problem:
            skipped.append((where, problem))
        elif text is None or not text.strip():
            skipped.append((where, "empty text"))
        elif _has_surrogates(text) or _has_surrogates(label or ""):
            skipped.append((where, "not UTF-8"))
        elif "\x00" in text:
            skipped.append((where, BINARY))
        elif label is None or not label.strip():
            skipped.append((where, "no label"))
        else:
            rows.append((where, text, label.strip()))
    return {"train": rows}, skipped


def _has_surrogates(text: str) -> bool:
    return any("\udc80" <= c <= "\udcff" for c in text)


def _hold_out(rows: list[tuple[str, int]], fraction: float, seed: int):
    """Splits off `fraction` of each class (at least one example of a class with two or more)."""
    by_class: dict[int, list] = {}
    for row in rows:
        by_class.setdefault(row[1], []).append(row)
    train, val = [], []
    for label in sorted(by_class):
        items = by_class[label]
        random.Random(seed + label).shuffle(items)
        n = min(max(1, round(len(items) * fraction)), len(items) - 1) if len(items) > 1 else 0
        val += items[:n]
        train += items[n:]
    return train, val


def read_text_source(path: str | Path, source: str = "", text_column: str = "text", label_column: str = "label",
                     classes: list[str] | None = None, val_fraction: float = 0.1, workers: int = 1,
                     seed: int = SPLIT_SEED) -> TextSplits:
    """Every kept text of a source, per split, with its label index; see the module docstring.

    Raises:
        DataError: a missing file or column, a bad layout, or fewer than two classes.
    """
    path = Path(path).expanduser()
    source = source or detect_source(path)
    if source == "folder":
        raw, skipped = _read_folder(path, workers)
    elif source in ("csv", "jsonl"):
        if not path.is_file():
            raise DataError(f"{source} file {path} does not exist; set data.data_dir to the file")
        raw, skipped = _read_table(path, source, text_column, label_column)
    else:
        raise DataError(f"text source {source!r} is not one of folder, csv, jsonl")
    names = list(classes) if classes else sorted({label for _, _, label in raw["train"]})
    if len(names) < 2:
        raise DataError(f"{path} has {len(names)} class(es) ({', '.join(names) or 'none'}) in its training "
                        f"texts; a classifier needs two or more (check {label_column!r} / the class folders)")
    index = {name: i for i, name in enumerate(names)}
    splits = {}
    for split, rows in raw.items():
        kept = []
        for where, text, label in rows:
            if label in index:
                kept.append((text, index[label]))
            else:
                skipped.append((where, f"unknown label {label!r}"))
        splits[split] = kept
    if "validation" not in splits and "test" not in splits:
        splits["train"], splits["validation"] = _hold_out(splits["train"], val_fraction, seed)
    return TextSplits(names, splits, sorted(skipped))


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores SLURM gave us, not the whole node's
    except AttributeError:
        return os.cpu_count() or 1
