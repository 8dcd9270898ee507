"""tf.data input pipelines over TFRecord shards, a class-folder tree, or synthetic images.

Every dataset yields `(images, labels)`: uint8 [B, S, S, 3] RGB and int32 [B]. The pipeline
only decodes, crops and resizes; the cast to float, flips, colour changes and normalisation live
in the model, on the accelerator (uint8 batches are a quarter of float32's bytes to batch, queue
and copy to the device). Input is split between pipelines by file, never by example, so each worker reads
only its own shards (`shard_files` says which). TFRecord shards are checked against the
converter's manifest at start and counted as they are read (`training.data.shards`).

Sources (`data.source`):
    tfrecord: `{prefix}-*` files in data.data_dir, with the standard ImageNet feature keys.
    demo: the digits set built by `training.data.demo.prepare_demo`, read as tfrecord.
    folder: data.data_dir/<split>/<class>/<image>; labels from the sorted class folder names.
    synthetic: random images and labels made once and repeated, to time a model without I/O.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from core.config import DataConfig
from core.layout import DEMO_PREFIXES, SPLITS, shard_prefix  # noqa: F401 (also this module's API)
from training.data import DataError, shards
from training.data.convert import LABELS_FILE
from training.data.decode import (  # noqa: F401 (also this module's API)
    DCT_RATIOS,
    crop_window,
    dct_window,
    decode_crop_resize,
    decode_jpeg_window,
)
from training.data.demo import cache_root, prepare_demo
from training.keras_compat import tf

AUTOTUNE = tf.data.AUTOTUNE
FOLDER_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")  # what tf.io.decode_image reads
# The standard ImageNet-1k conversion writes no labels.json; its layout identifies it.
IMAGENET_COUNTS = {("train", 1024): 1_281_167, ("validation", 128): 50_000}
# JPEG decodes at 1/2, 1/4 or 1/8 scale (libjpeg's scaled IDCT) when the crop window stays at
# least the target size on its shorter side after the scaling: cheaper, and a better downscale
# than bilinear resizing from full resolution (an area average, not 2x2 samples).
TFRECORD_READ_BUFFER = 8 << 20  # bytes per open shard; large reads suit parallel file systems
SYNSETS_FILE = "synsets.txt"  # beside ImageNet shards: one synset per line in label order, maybe its text
NAMING_RECORDS = 10_000  # validation records read at most to name classes from their features


@dataclass
class DatasetInfo:
    """What the model and the loop need to know about a data set."""

    num_classes: int
    class_names: list[str]
    train_examples: int
    val_examples: int
    data_dir: str  # resolved: for demo, the built shard folder


def resolve_data_dir(data: DataConfig) -> str:
    """The folder the pipeline reads; for demo, builds the shards on first use."""
    if data.source == "demo":
        return str(prepare_demo(cache_root(data.data_dir)))
    return data.data_dir


def _tfrecord_files(data_dir: str, prefix: str) -> list[str]:
    if not tf.io.gfile.isdir(data_dir):
        raise DataError(f"data.data_dir {data_dir} does not exist or is not a folder")
    # listdir rather than glob: a folder name with [ or * in it must not act as a pattern.
    names = sorted(n for n in tf.io.gfile.listdir(data_dir) if n.startswith(prefix + "-"))
    if not names:
        raise DataError(f"no TFRecord shards named {prefix}-* in {data_dir}; check data.data_dir and "
                        "data.train_split / data.val_split")
    return [tf.io.gfile.join(data_dir, n) for n in names]


def _folder_split_dir(data_dir: str, name: str) -> str:
    path = tf.io.gfile.join(data_dir, name)
    # Class-folder trees usually call it val/, as the converter's input does.
    if name == "validation" and not tf.io.gfile.isdir(path):
        path = tf.io.gfile.join(data_dir, "val")
    if not tf.io.gfile.isdir(path):
        raise DataError(f"{tf.io.gfile.join(data_dir, name)} is not a folder; data.source folder needs "
                        f"{data_dir}/<split>/<class>/<image> (set data.train_split / data.val_split)")
    return path


def _folder_classes(data: DataConfig) -> list[str]:
    train_dir = _folder_split_dir(data.data_dir, data.train_split)
    classes = sorted(n.rstrip("/") for n in tf.io.gfile.listdir(train_dir)
                     if not n.startswith(".") and tf.io.gfile.isdir(tf.io.gfile.join(train_dir, n)))
    if not classes:
        raise DataError(f"{train_dir} holds no class sub-folders; expected {train_dir}/<class>/<image>")
    return classes


def _folder_examples(data: DataConfig, split: str) -> tuple[list[str], list[int]]:
    """All image files of a split in a fixed order, and their labels."""
    classes = _folder_classes(data)
    split_dir = _folder_split_dir(data.data_dir, shard_prefix(data, split))
    files, labels = [], []
    for name in sorted(tf.io.gfile.listdir(split_dir)):
        name = name.rstrip("/")
        class_dir = tf.io.gfile.join(split_dir, name)
        if name.startswith(".") or not tf.io.gfile.isdir(class_dir):
            continue
        if name not in classes:
            raise DataError(f"{class_dir} is a class that {data.train_split}/ lacks; every class needs "
                            "training images")
        label = classes.index(name)
        for file in sorted(tf.io.gfile.listdir(class_dir)):
            if file.lower().endswith(FOLDER_SUFFIXES) and not file.startswith("."):
                files.append(tf.io.gfile.join(class_dir, file))
                labels.append(label)
    if not files:
        raise DataError(f"{split_dir} holds no images ({', '.join(FOLDER_SUFFIXES)}) in class folders")
    return files, labels


def _pipelines(input_context: tf.distribute.InputContext | None) -> tuple[int, int]:
    if input_context is None:
        return 1, 0
    return input_context.num_input_pipelines, input_context.input_pipeline_id


def _sharded(data: DataConfig, split: str, input_context) -> tuple[list[str], list[int] | None]:
    if data.source == "folder":
        files, labels = _folder_examples(data, split)
    else:
        files, labels = _tfrecord_files(resolve_data_dir(data), shard_prefix(data, split)), None
    count, index = _pipelines(input_context)
    if len(files) < count:
        raise DataError(f"{len(files)} {shard_prefix(data, split)} files cannot be split between {count} input "
                        "pipelines (one worker each); write more shards or run fewer workers")
    # Same rule as Dataset.shard(count, index): file k goes to pipeline k % count.
    return files[index::count], None if labels is None else labels[index::count]


def shard_files(data: DataConfig, split: str,
                input_context: tf.distribute.InputContext | None = None) -> list[str]:
    """The files one input pipeline reads for `split` ("train" or "val"); [] for synthetic.

    Pipelines get disjoint files that together cover the split. Raises DataError when there are
    fewer files than pipelines.
    """
    if data.source == "synthetic":
        return []
    return _sharded(data, split, input_context)[0]


def _count_examples(files: list[str], prefix: str) -> int:
    known = IMAGENET_COUNTS.get((prefix, len(files)))
    if known and re.search(rf"-of-{len(files):05d}$", files[0]):
        return known
    return sum(shards.count_records(f) for f in files)


def _num_classes(data: DataConfig, labels: dict | None, data_dir: str) -> int:
    if labels is not None:
        return len(labels["classes"])
    if data.num_classes <= 0:
        raise DataError(f"{data_dir} has no {LABELS_FILE}, so set data.num_classes (for the standard "
                        "ImageNet shards: data.num_classes=1000 data.label_offset=1)")
    return data.num_classes


def dataset_info(data: DataConfig) -> DatasetInfo:
    """Class names and example counts.

    tfrecord/demo: from labels.json next to the shards, whose shard list must match the files.
    Without one (the standard ImageNet shards), data.num_classes must be set; counts are the
    known ImageNet-1k numbers when the files have the standard 1024/128 layout, else counted by
    reading record headers only (which also finds a shard cut short).
    folder: class folders of the train split, image files per split. synthetic: the config.
    """
    if data.source == "synthetic":
        classes = data.synthetic_classes
        return DatasetInfo(classes, [str(i) for i in range(classes)], data.synthetic_examples,
                           _synthetic_val_examples(data), "")
    if data.source == "folder":
        classes = _folder_classes(data)
        return DatasetInfo(len(classes), classes, len(_folder_examples(data, "train")[0]),
                           len(_folder_examples(data, "val")[0]), data.data_dir)

    data_dir = resolve_data_dir(data)
    prefixes = shard_prefix(data, "train"), shard_prefix(data, "val")
    labels = shards.read_labels(data_dir)
    num_classes = _num_classes(data, labels, data_dir)
    if labels is None:
        files = [_tfrecord_files(data_dir, p) for p in prefixes]
        counts = [_count_examples(f, p) for f, p in zip(files, prefixes)]
        names = _imagenet_class_names(data_dir, num_classes, data.label_offset, files[1])
        return DatasetInfo(num_classes, names, *counts, data_dir)

    labels_path = tf.io.gfile.join(data_dir, LABELS_FILE)
    classes, offset = labels["classes"], labels.get("label_offset", 0)
    if offset != data.label_offset:
        raise DataError(f"{labels_path} says label_offset {offset} but data.label_offset is "
                        f"{data.label_offset}; set data.label_offset={offset}")
    if data.num_classes and data.num_classes != len(classes):
        raise DataError(f"data.num_classes is {data.num_classes} but {labels_path} lists {len(classes)} "
                        "classes; set data.num_classes=0 to use the file")
    counts = labels.get("counts", {})
    for prefix in prefixes:
        if prefix not in counts:
            raise DataError(f"{labels_path} has no count for split {prefix!r}; its splits are "
                            f"{', '.join(counts) or 'none'} (set data.train_split / data.val_split)")
        names = [f.rsplit("/", 1)[-1] for f in _tfrecord_files(data_dir, prefix)]
        shards.check_listed(data_dir, prefix, names, labels)
    return DatasetInfo(len(classes), list(classes), counts[prefixes[0]], counts[prefixes[1]], data_dir)


def _imagenet_class_names(data_dir: str, num_classes: int, label_offset: int, val_files: list[str]) -> list[str]:
    """Class names for shards without labels.json, as the standard ImageNet scripts write them.

    From synsets.txt beside the shards (line i names label i after the offset: a synset, or a
    synset and its text), else from the image/class/text (or image/class/synset) feature of the
    validation records, read until every class is named or NAMING_RECORDS records (~1.3 GB of
    ImageNet; a synsets.txt saves that read at every job start). Unnamed classes keep their number.
    """
    names = [str(i) for i in range(num_classes)]
    path = tf.io.gfile.join(data_dir, SYNSETS_FILE)
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path) as fh:
            lines = [line.split(None, 1) for line in fh.read().splitlines() if line.strip()]
        if len(lines) != num_classes:
            raise DataError(f"{path} names {len(lines)} classes but there are {num_classes} "
                            f"(data.num_classes); make them agree or remove {SYNSETS_FILE}")
        return [parts[-1].strip() for parts in lines]
    # Damaged shards are passed over here: the integrity checks name them when the pipeline starts.
    try:
        record = next(iter(tf.data.TFRecordDataset(val_files[0]).take(1))).numpy()
        keys = set(tf.train.Example.FromString(record).features.feature)
    except Exception:  # empty, cut short or not Examples
        return names
    if not {"image/class/text", "image/class/synset"} & keys:
        return names
    spec = {key: tf.io.FixedLenFeature([], tf.string, default_value="")
            for key in ("image/class/text", "image/class/synset")}
    spec["image/class/label"] = tf.io.FixedLenFeature([], tf.int64, default_value=-1)
    named = set()
    records = tf.data.TFRecordDataset(val_files, buffer_size=TFRECORD_READ_BUFFER).take(NAMING_RECORDS)
    for batch in records.batch(256).map(lambda group: tf.io.parse_example(group, spec)).ignore_errors():
        for raw, text, synset in zip(*(batch[k].numpy() for k in ("image/class/label", "image/class/text",
                                                                  "image/class/synset"))):
            label = int(raw) - label_offset
            if 0 <= label < num_classes and label not in named and (text or synset):
                names[label] = (text or synset).decode("utf-8", "replace")
                named.add(label)
        if len(named) == num_classes:
            break
    return names


def _synthetic_val_examples(data: DataConfig) -> int:
    # A tenth of an epoch: enough to time evaluation without doubling a benchmark's length.
    return max(1, data.synthetic_examples // 10)


def _synthetic(data: DataConfig, split: str, training: bool, batch_size: int, pipelines: int,
               seed: int) -> tf.data.Dataset:
    size, classes = data.image_size, data.synthetic_classes

    def make(_):
        images = tf.random.stateless_uniform([batch_size, size, size, 3], [seed, 0], maxval=256, dtype=tf.int32)
        images = tf.cast(images, tf.uint8)
        labels = tf.random.stateless_uniform([batch_size], [seed, 1], minval=0, maxval=classes, dtype=tf.int32)
        return images, labels

    # Made inside the pipeline and cached: a large constant would bloat the dataset graph.
    ds = tf.data.Dataset.from_tensors(0).map(make).cache()
    if training:
        return ds.repeat().prefetch(AUTOTUNE)
    examples = (_synthetic_val_examples(data) if split == "val" else data.synthetic_examples) // pipelines
    return ds.repeat(max(1, math.ceil(examples / batch_size))).prefetch(AUTOTUNE)


def build_dataset(data: DataConfig, split: str, training: bool, batch_size: int,
                  input_context: tf.distribute.InputContext | None = None, seed: int = 0) -> tf.data.Dataset:
    """One input pipeline's batches of `(images, labels)`.

    Args:
        data: the data section of the config.
        split: "train" or "val" (which files); `training` decides the processing.
        training: random-resized crops, shuffling, endless repetition and full batches only;
            otherwise centre crops and one finite pass that keeps the last partial batch.
        batch_size: examples per batch of this pipeline (per replica under
            `distribute_datasets_from_function`), not the global batch.
        input_context: which pipeline this is; None means the only one.
        seed: shuffle and crop seed; pass seed + rank so workers differ (the loop does).
    """
    count, _ = _pipelines(input_context)
    if data.source == "synthetic":
        shard_prefix(data, split)  # rejects a bad split name
        ds = _synthetic(data, split, training, batch_size, count, seed)
    else:
        ds = _from_files(data, split, training, batch_size, input_context, seed)
    options = tf.data.Options()
    # Files are already split between workers here; tf.distribute must not split them again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options)


def _from_files(data: DataConfig, split: str, training: bool, batch_size: int, input_context,
                seed: int) -> tf.data.Dataset:
    files, labels = _sharded(data, split, input_context)
    # Training order may vary run to run for speed; evaluation order stays fixed.
    deterministic = not training
    if labels is None:
        data_dir = resolve_data_dir(data)
        manifest = shards.read_labels(data_dir)
        num_classes = _num_classes(data, manifest, data_dir)
        sizes, expected = shards.check_shards(files, manifest)  # this pipeline's shards only
        ds = tf.data.Dataset.from_tensor_slices((files, tf.constant(sizes, tf.int64), tf.constant(expected, tf.int64)))
    else:
        ds = tf.data.Dataset.from_tensor_slices((files, tf.constant(labels, tf.int32)))
    if training:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True).repeat()

    # The functions given to tf.data below are written with TensorFlow's own control flow
    # (tf.cond, tf.switch_case), so autograph has nothing to convert in them: converting them
    # anyway cost about 1.5 CPU-s at every start of every rank.
    if labels is None:
        @tf.autograph.experimental.do_not_convert
        def shard(path, size, expected):
            return shards.read_shard(path, size, expected, num_classes, data.label_offset, TFRECORD_READ_BUFFER)

        ds = ds.interleave(shard, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
        if training:
            ds = ds.shuffle(data.shuffle_buffer, seed=seed)

        def read(encoded, label):  # parsed and checked per shard, by read_shard
            return encoded, label
    else:
        def read(path, label):  # the file list is already shuffled whole; no example shuffle needed
            return tf.io.read_file(path), label

    @tf.autograph.experimental.do_not_convert
    def load(position, element):
        encoded, label = read(*element)
        # Stateless crops keyed by (seed, position): map threads share no random state.
        image = decode_crop_resize(encoded, data, training, tf.stack([tf.cast(seed, tf.int64), position]))
        return image, label

    ds = ds.enumerate().map(load, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    if labels is not None:
        # One unreadable image in a folder tree should not end a run; the converter lists them instead.
        ds = ds.ignore_errors(log_warning=True)
    ds = ds.batch(batch_size, drop_remainder=training, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    return ds.prefetch(AUTOTUNE)
