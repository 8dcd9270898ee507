"""Writing a converter's output, for every task: TFRecord shards under temporary names, the
skipped-file list and `labels.json` with its shard manifest, written last to mark completion.

`labels.json` holds `classes`, `counts` (split -> examples), `label_offset`, `skipped` and
`shards` ({file name: {"bytes": size, "records": n}}), which `launch` and the pipelines check
shards against. TensorFlow is imported only to write records.
"""
from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable

from core import layout, rundir
from core.fsutil import atomic_path
from training.data import DataError

LABELS_FILE = layout.LABELS_FILE
SKIPPED_FILE = rundir.SKIPPED  # the same name beside converted shards and in a run reading texts directly


def readable_by_others(path: Path) -> None:
    # Temporary files are created private (0600); shards on shared storage must be readable by
    # whoever the umask allows, like any other file the user writes.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
        readable_by_others(tmp)


def check_output_folder(out: Path) -> None:
    """`out` must be new or empty: a converter never mixes its shards with others."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        hint = "" if (out / LABELS_FILE).exists() else " (a conversion stopped part-way leaves no labels.json)"
        raise DataError(f"output folder {out} already exists and is not empty{hint}; remove it or pass "
                        "a new or empty folder")


def shard_name(split: str, index: int, num_shards: int) -> str:
    return f"{split}-{index:05d}-of-{num_shards:05d}"


def write_shard(out_dir: Path, split: str, index: int, num_shards: int,
                records: Iterable[dict[str, bytes | int]]) -> tuple[str, dict]:
    """Writes one shard of tf.train.Example records (bytes -> bytes_list, int -> int64_list)
    under a temporary name and renames it into place.

    Returns:
        (file name, its manifest entry {"bytes": size on disk, "records": records written}).
    """
    from training.keras_compat import tf  # defers TensorFlow

    def feature(value):
        if isinstance(value, bytes):
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    path = out_dir / shard_name(split, index, num_shards)
    count = 0
    with atomic_path(path) as tmp, tf.io.TFRecordWriter(str(tmp)) as writer:
        for record in records:
            example = tf.train.Example(features=tf.train.Features(
                feature={key: feature(value) for key, value in record.items()}))
            writer.write(example.SerializeToString())
            count += 1
    readable_by_others(path)
    return path.name, {"bytes": path.stat().st_size, "records": count}


def write_skipped(out_dir: Path, skipped: list[tuple[str, str]]) -> None:
    """skipped.txt: one `path<TAB>reason` line per example not kept, sorted."""
    # Newlines in a file name would split its line; they are the one character escaped.
    write_text(out_dir / SKIPPED_FILE, "".join(
        f"{path.replace(chr(10), chr(92) + 'n')}\t{reason}\n" for path, reason in sorted(skipped)))


def skipped_line(skipped: list[tuple[str, str]], listed_in: Path) -> str:
    """The log line for what was left out: how many, why (most common first), where listed."""
    # "not a readable image (OSError: ...)" names the file's own error; the count goes by the kind.
    counts = Counter(reason.split(" (")[0] for _, reason in skipped)
    reasons = sorted(counts.items(), key=lambda rn: (-rn[1], rn[0]))
    why = f" ({', '.join(f'{n} {reason}' for reason, n in reasons)})" if reasons else ""
    return f"skipped {len(skipped)}{why}, listed in {listed_in}"


def write_labels(out_dir: Path, classes: list[str], counts: dict[str, int], skipped: int,
                 manifest: dict[str, dict], **extra) -> None:
    """labels.json, written last: the output is complete only once it exists."""
    labels = {"classes": classes, "counts": counts, "label_offset": 0, "skipped": skipped, **extra,
              "shards": dict(sorted(manifest.items()))}
    write_text(out_dir / LABELS_FILE, json.dumps(labels, indent=1) + "\n")


def run_converter(convert: Callable) -> int:
    """A converter's command line: `convert(log=...)` with progress on stderr, its summary line on
    stdout; a DataError is one line on stderr and exit 2."""
    try:
        summary = convert(log=lambda text: print(text, file=sys.stderr, flush=True))
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary.line())
    return 0
