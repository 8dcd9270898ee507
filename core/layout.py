"""The dataset layout both sides read: a converted data folder holds `{prefix}-NNNNN-of-NNNNN`
TFRecord shards per split and, written last, LABELS_FILE (class names and the shard manifest).
Launch checks it before the queue (launcher/preflight.py); the job reads it
(training/data/pipeline.py); the converter writes it (training/data/records.py)."""
from __future__ import annotations

from core.schema import DataConfig

LABELS_FILE = "labels.json"  # class names and the manifest {shard: {bytes, records}}; the folder is complete once it exists
SPLITS = ("train", "val")
DEMO_PREFIXES = {"train": "train", "val": "validation"}  # what the converter names the demo's splits


def shard_prefix(data: DataConfig, split: str) -> str:
    """The name prefix of a split's shards (`{prefix}-*`), or its sub-folder for data.source folder."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if data.source == "demo":  # a fixed data set: the split names in the config do not apply
        return DEMO_PREFIXES[split]
    return data.train_split if split == "train" else data.val_split
