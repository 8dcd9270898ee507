"""tf.data input for the text task: `(raw text, label)` pairs, and batches of token ids.

Sources (`data.source` with `task: text`):
    tfrecord: `{prefix}-*` shards written by `python -m training.data.convert_text` (features
        `text`, `label`, `label/text`, and labels.json beside them); split between input
        pipelines by file, as image shards are.
    demo: the sentiment snippets built by training/data/sentiment_demo.py, read as tfrecord.
    folder / csv / jsonl: read directly (training/data/text_sources.py) into memory; each input
        pipeline takes every n-th text. What the reader left out is `skipped_texts`, which the
        chief lists in the run's skipped.txt (training/tasks/text.py).
"""
from __future__ import annotations

import functools

from core.config import DataConfig
from training.data import DataError, shards
from training.data.demo import cache_root
from training.data.pipeline import DatasetInfo, _tfrecord_files
from training.data.records import LABELS_FILE
from training.data.sentiment_demo import prepare_sentiment_demo
from training.data.text_sources import read_text_source
from training.keras_compat import tf

AUTOTUNE = tf.data.AUTOTUNE
DIRECT_SOURCES = ("folder", "csv", "jsonl")  # read into memory at start, not converted first
TFRECORD_READ_BUFFER = 1 << 20


def resolve_data_dir(data: DataConfig) -> str:
    if data.source == "demo":
        return str(prepare_sentiment_demo(cache_root(data.data_dir)))
    return data.data_dir


def _split_name(data: DataConfig, split: str) -> str:
    if data.source == "demo":
        return {"train": "train", "val": "validation"}[split]
    return data.train_split if split == "train" else data.val_split


@functools.lru_cache(maxsize=4)
def _direct(data_dir: str, source: str, text_column: str, label_column: str, classes: tuple, val_fraction: float):
    return read_text_source(data_dir, source, text_column, label_column, list(classes) or None, val_fraction)


def _read_direct(data: DataConfig):
    return _direct(data.data_dir, data.source, data.text_column, data.label_column, tuple(data.classes),
                   data.val_fraction)


def _direct_split(data: DataConfig, split: str) -> list[tuple[str, int]]:
    texts = _read_direct(data)
    name = _split_name(data, split)
    if name not in texts.splits:
        key = "data.train_split" if split == "train" else "data.val_split"
        raise DataError(f"{data.data_dir} has no {name!r} split (it has {', '.join(texts.splits)}); set {key}")
    return texts.splits[name]


def skipped_texts(data: DataConfig) -> list[tuple[str, str]] | None:
    """(where, why) of every text a directly read source left out; None for shards, whose
    converter listed them beside the shards."""
    return _read_direct(data).skipped if data.source in DIRECT_SOURCES else None


def _check_class_sizes(data: DataConfig, classes: list[str], train_counts: list[int] | None) -> None:
    """A class with fewer training texts than one global batch is almost surely a labelling slip."""
    for name, count in zip(classes, train_counts or []):
        if count < data.batch_size:
            raise DataError(f"class {name!r} has {count} training texts, fewer than one global batch "
                            f"(data.batch_size {data.batch_size}); add texts, keep only the other classes "
                            "with data.classes, or lower data.batch_size")


def text_info(data: DataConfig) -> DatasetInfo:
    """Classes and example counts of the train and val splits."""
    if data.source in DIRECT_SOURCES:
        texts = _read_direct(data)
        train = _direct_split(data, "train")
        _check_class_sizes(data, texts.classes, [sum(1 for _, lab in train if lab == i)
                                                 for i in range(len(texts.classes))])
        return DatasetInfo(len(texts.classes), list(texts.classes), len(train),
                           len(_direct_split(data, "val")), data.data_dir)
    data_dir = resolve_data_dir(data)
    labels = shards.read_labels(data_dir)
    if labels is None or "text" not in labels.get("features", []):
        raise DataError(f"{data_dir} holds no text shards ({LABELS_FILE} with features text/label); convert the "
                        "texts with python -m training.data.convert_text")
    counts = []
    for split in ("train", "val"):
        prefix = _split_name(data, split)
        if prefix not in labels["counts"]:
            raise DataError(f"{data_dir}/{LABELS_FILE} has no split {prefix!r}; its splits are "
                            f"{', '.join(labels['counts'])} (set data.train_split / data.val_split)")
        names = [f.rsplit("/", 1)[-1] for f in _tfrecord_files(data_dir, prefix)]
        shards.check_listed(data_dir, prefix, names, labels)
        counts.append(labels["counts"][prefix])
    _check_class_sizes(data, labels["classes"], labels.get("class_counts", {}).get(_split_name(data, "train")))
    return DatasetInfo(len(labels["classes"]), list(labels["classes"]), *counts, data_dir)


def _pipelines(input_context) -> tuple[int, int]:
    if input_context is None:
        return 1, 0
    return input_context.num_input_pipelines, input_context.input_pipeline_id


def train_files(data: DataConfig, input_context=None) -> list[str]:
    """The shard files one input pipeline reads for training; [] for sources read directly."""
    if data.source in DIRECT_SOURCES:
        return []
    count, index = _pipelines(input_context)
    return _tfrecord_files(resolve_data_dir(data), _split_name(data, "train"))[index::count]


def text_dataset(data: DataConfig, split: str, training: bool, input_context=None, seed: int = 0) -> tf.data.Dataset:
    """One input pipeline's `(text, label)` pairs, unbatched; endless and shuffled when training."""
    count, index = _pipelines(input_context)
    if data.source in DIRECT_SOURCES:
        rows = _direct_split(data, split)[index::count]
        if not rows:
            raise DataError(f"no {_split_name(data, split)} texts for input pipeline {index} of {count}")
        ds = tf.data.Dataset.from_tensor_slices(([t for t, _ in rows], [lab for _, lab in rows]))
        ds = ds.map(lambda t, lab: (t, tf.cast(lab, tf.int32)))
    else:
        files = _tfrecord_files(resolve_data_dir(data), _split_name(data, split))
        if len(files) < count:
            raise DataError(f"{len(files)} {_split_name(data, split)} shards cannot be split between {count} "
                            "input pipelines (one worker each); convert with more shards or run fewer workers")
        files = files[index::count]
        spec = {"text": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}
        ds = tf.data.Dataset.from_tensor_slices(files)
        if training:
            ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        ds = ds.interleave(lambda f: tf.data.TFRecordDataset(f, buffer_size=TFRECORD_READ_BUFFER),
                           num_parallel_calls=AUTOTUNE, deterministic=not training)
        ds = ds.map(lambda r: tf.io.parse_single_example(r, spec), num_parallel_calls=AUTOTUNE)
        ds = ds.map(lambda ex: (ex["text"], tf.cast(ex["label"], tf.int32)))
    if training:
        ds = ds.repeat().shuffle(data.shuffle_buffer, seed=seed)
    return ds


def token_batches(ds: tf.data.Dataset, vectorize, batch_size: int, training: bool) -> tf.data.Dataset:
    """Batches of (int32 token ids [B, sequence_length], int32 labels [B])."""
    ds = ds.batch(batch_size, drop_remainder=training)
    ds = ds.map(lambda t, lab: (tf.cast(vectorize(t), tf.int32), lab), num_parallel_calls=AUTOTUNE)
    options = tf.data.Options()
    # Files are already split between workers here; tf.distribute must not split them again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.prefetch(AUTOTUNE).with_options(options)
