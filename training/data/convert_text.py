"""Labelled texts (class folders, CSV or JSONL) -> TFRecord shards for the text task.

    python -m training.data.convert_text SRC OUT [--source folder|csv|jsonl]
        [--text-column text] [--label-column label] [--classes pos,neg] [--val-fraction 0.1]
        [--shards-train 16] [--shards-val 4] [--shards-test 4] [--workers N]

SRC is read as training/data/text_sources.py describes (UTF-8 with or without BOM; texts that
are not UTF-8, binary or empty and unknown labels are skipped, counted in the log and listed).
OUT receives shards named like the image converter's (`train-00000-of-00016`, `validation-...`,
`test-...`) whose records hold `text` (UTF-8 bytes), `label` (0-based int) and `label/text` (the
class name), then `skipped.txt` and, last, `labels.json` with the same manifest the image
converter writes (training/data/records.py writes both). A source without a validation split
gets one of `--val-fraction` of each class. Worker processes read and decode the files of a
folder tree.
"""
from __future__ import annotations

import argparse
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from training.data.records import (SKIPPED_FILE, check_output_folder, run_converter, skipped_line, write_labels,
                                   write_shard, write_skipped)
from training.data.text_sources import SPLIT_SEED, default_workers, read_text_source

DEFAULT_SHARDS = {"train": 16, "validation": 4, "test": 4}
TEXT_FEATURES = ("text", "label", "label/text")


@dataclass
class TextConvertSummary:
    out_dir: Path
    classes: list[str]
    counts: dict[str, int]
    skipped: list[tuple[str, str]]

    def line(self) -> str:
        parts = ", ".join(f"{s} {n}" for s, n in self.counts.items())
        return (f"converted {len(self.classes)} classes ({parts} texts) into {self.out_dir}; skipped "
                f"{len(self.skipped)}, listed in {self.out_dir / SKIPPED_FILE}")


def convert_text(src: str | Path, out: str | Path, source: str = "", text_column: str = "text",
                 label_column: str = "label", classes: list[str] | None = None, val_fraction: float = 0.1,
                 shards: dict[str, int] | None = None, workers: int | None = None, log=print) -> TextConvertSummary:
    """Converts a text source into shards; see the module docstring.

    Raises:
        DataError: a bad source (missing file or column, one class) or a non-empty output folder.
    """
    out = Path(out)
    check_output_folder(out)
    data = read_text_source(src, source, text_column, label_column, classes, val_fraction,
                            workers or default_workers())
    wanted = {**DEFAULT_SHARDS, **(shards or {})}
    out.mkdir(parents=True, exist_ok=True)
    manifest, counts = {}, {}
    for split, rows in data.splits.items():
        rows = list(rows)
        random.Random(SPLIT_SEED).shuffle(rows)  # each shard mixes the classes
        n = max(1, min(wanted.get(split, 1), len(rows)))
        for i in range(n):
            name, manifest[name] = write_shard(out, split, i, n, (
                {"text": text.encode("utf-8"), "label": label, "label/text": data.classes[label].encode("utf-8")}
                for text, label in rows[i::n]))
        counts[split] = len(rows)
        log(f"  {split}: {len(rows)} texts in {n} shards")
    write_skipped(out, data.skipped)
    log(skipped_line(data.skipped, out / SKIPPED_FILE))
    per_class = {split: [sum(1 for _, lab in rows if lab == i) for i in range(len(data.classes))]
                 for split, rows in data.splits.items()}
    write_labels(out, data.classes, counts, len(data.skipped), manifest, features=list(TEXT_FEATURES),
                 class_counts=per_class)
    return TextConvertSummary(out, data.classes, counts, data.skipped)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.data.convert_text",
                                     description="Convert labelled texts (class folders, CSV, JSONL) into "
                                                 "TFRecord shards in OUT.")
    parser.add_argument("src", help="class-folder root (train/<class>/*.txt), or a .csv / .jsonl file")
    parser.add_argument("out", help="new or empty output folder")
    parser.add_argument("--source", choices=("folder", "csv", "jsonl"), default="",
                        help="format of SRC (default: from SRC itself)")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--classes", default="", help="comma-separated labels to keep (default: every label seen)")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="held out per class when SRC has no validation split")
    parser.add_argument("--shards-train", type=int, default=DEFAULT_SHARDS["train"])
    parser.add_argument("--shards-val", type=int, default=DEFAULT_SHARDS["validation"])
    parser.add_argument("--shards-test", type=int, default=DEFAULT_SHARDS["test"])
    parser.add_argument("--workers", type=int, default=None, help="processes reading files (default: all usable cores)")
    args = parser.parse_args(argv)
    if min(args.shards_train, args.shards_val, args.shards_test) < 1 or (args.workers or 1) < 1:
        parser.error("shard and worker counts must be at least 1")
    if not 0 < args.val_fraction < 1:
        parser.error("--val-fraction must lie between 0 and 1")
    shards = {"train": args.shards_train, "validation": args.shards_val, "test": args.shards_test}
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] or None
    return run_converter(lambda log: convert_text(args.src, args.out, args.source, args.text_column,
                                                  args.label_column, classes, args.val_fraction, shards,
                                                  args.workers, log=log))


if __name__ == "__main__":
    sys.exit(main())
