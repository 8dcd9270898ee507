"""TFRecord shard integrity: what the converter wrote against what is on disk and what is read.

At the start of each input pipeline, for its own shards only: one `stat` and one read of the
first record per shard (about 100 kB for ImageNet). That finds 0-byte shards, shards whose size
differs from the converter's manifest (`labels.json` "shards": truncated, records dropped,
replaced) and renamed or mistyped feature keys.

While reading, at no extra I/O: every shard's records and bytes are counted as they pass. At the
end of a shard the bytes must add up to the file's size, because TFRecord reading ends a shard
quietly when a record is cut inside its header and with an unnamed DataLossError elsewhere; and
the records must match the manifest where there is one. Every label must lie in
[0, num_classes). Those checks run inside the tf.data graph and fail with a DataError's text,
which `training.data.as_data_error` turns back into a DataError.
"""
from __future__ import annotations

import json
import os
import struct

from training.data import IN_GRAPH_MARK, DataError
from training.data.convert import LABELS_FILE
from training.keras_compat import tf

# The two standard ImageNet keys the pipeline reads, and the protobuf list each must hold.
REQUIRED_FEATURES = {"image/encoded": "bytes_list", "image/class/label": "int64_list"}
RECORD_OVERHEAD = 16  # bytes around each record: uint64 length, its crc32c, the data's crc32c
_GROUP = 32  # records read, counted and checked per step; ~3.5 MB of ImageNet per open shard
_MISSING_LABEL = -(2 ** 63)  # parse default: no record holds it, so it marks a missing key
_REFETCH = "copy the shard again or re-run python -m training.data.convert"
_KEYS_FIX = (f"the pipeline reads the standard ImageNet keys {' and '.join(REQUIRED_FEATURES)}; write the "
             "shards with those keys (python -m training.data.convert does)")


def read_labels(data_dir: str) -> dict | None:
    """labels.json beside the shards, or None when there is none (the standard ImageNet shards)."""
    path = tf.io.gfile.join(data_dir, LABELS_FILE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as fh:
        try:
            return json.load(fh)
        except ValueError as err:
            raise DataError(f"{path} is not valid JSON ({err}); re-run the converter to write it again") from None


def check_listed(data_dir: str, prefix: str, names: list[str], labels: dict | None) -> None:
    """The split's shard files on disk are exactly those the converter's manifest lists."""
    manifest = (labels or {}).get("shards")
    if manifest is None:  # no manifest (ImageNet shards, older conversions): checked while reading
        return
    listed = {n for n in manifest if n.startswith(prefix + "-")}
    missing, extra = sorted(listed - set(names)), sorted(set(names) - listed)
    if missing:
        raise DataError(f"{data_dir} lacks {len(missing)} of the {len(listed)} {prefix} shards that {LABELS_FILE} "
                        f"lists, first {missing[0]}; copy them again or re-run python -m training.data.convert")
    if extra:
        raise DataError(f"shard {tf.io.gfile.join(data_dir, extra[0])} is not among the shards {LABELS_FILE} "
                        "lists (left from another conversion?); remove it or re-run the converter")


def _open(path: str):
    # Plain files through Python's small buffer: GFile would read 512 kB to get 12 header bytes.
    return tf.io.gfile.GFile(path, "rb") if "://" in path else open(path, "rb")


def _first_record(path: str, size: int) -> bytes:
    with _open(path) as fh:
        header = fh.read(12)
        length = struct.unpack("<Q", header[:8])[0] if len(header) == 12 else None
        if length is None or 12 + length + 4 > size:
            raise DataError(f"shard {path} is cut short inside its first record ({size} bytes) or is not a "
                            f"TFRecord file; {_REFETCH}")
        return fh.read(length)


def _check_keys(path: str, record: bytes) -> None:
    try:
        features = tf.train.Example.FromString(record).features.feature
    except Exception:  # protobuf's DecodeError; its module path differs between protobuf versions
        raise DataError(f"shard {path} does not hold tf.train.Example records; {_KEYS_FIX}") from None
    for key, kind in REQUIRED_FEATURES.items():
        if key not in features:
            found = ", ".join(sorted(features)) or "none"
            raise DataError(f"shard {path} has no feature {key!r} (its keys: {found}); {_KEYS_FIX}")
        held = features[key].WhichOneof("kind")
        count = len(getattr(features[key], held).value) if held else 0
        if held != kind or count != 1:
            raise DataError(f"shard {path}: feature {key!r} holds {count} value(s) in {held or 'no list'}, "
                            f"but the pipeline reads one value in {kind}; {_KEYS_FIX}")


def check_shards(files: list[str], labels: dict | None) -> tuple[list[int], list[int]]:
    """Checks each shard's size against the manifest and its first record's feature keys.

    Returns:
        (size in bytes, records the converter wrote or -1 when unknown), per file, for `read_shard`.
    """
    manifest = (labels or {}).get("shards") or {}
    sizes, expected = [], []
    for path in files:
        size = tf.io.gfile.stat(path).length
        written = manifest.get(os.path.basename(path))
        if size == 0:
            raise DataError(f"shard {path} is empty (0 bytes); {_REFETCH}")
        if written and size != written["bytes"]:
            raise DataError(f"shard {path} is {size} bytes but the converter wrote {written['bytes']} bytes "
                            f"({written['records']} records; {LABELS_FILE}): it was cut short or replaced; "
                            f"{_REFETCH}")
        _check_keys(path, _first_record(path, size))
        sizes.append(size)
        expected.append(written["records"] if written else -1)
    return sizes, expected


def count_records(path: str) -> int:
    """Counts records by hopping from header to header: one 12-byte read and a seek per record."""
    size, count, offset = tf.io.gfile.stat(path).length, 0, 0
    with _open(path) as fh:
        while offset < size:
            header = fh.read(12)
            length = struct.unpack("<Q", header[:8])[0] if len(header) == 12 else None
            if length is None or offset + length + RECORD_OVERHEAD > size:
                raise DataError(f"shard {path} is cut short: record {count + 1} at byte {offset} does not end "
                                f"within the file's {size} bytes; {_REFETCH}")
            offset += length + RECORD_OVERHEAD
            fh.seek(offset)
            count += 1
    return count


def _check(ok, message):
    """Returns `ok`, failing the pipeline with the DataError text `message()` when it is false.

    The message is built only on failure: string formatting per record would cost time.
    """
    def fail():
        text = tf.strings.join([IN_GRAPH_MARK, message()])
        with tf.control_dependencies([tf.debugging.Assert(False, [text], summarize=1)]):
            return tf.identity(ok)

    return tf.cond(ok, lambda: ok, fail)


def read_shard(path, size, expected, num_classes: int, label_offset: int,
               buffer_size: int) -> tf.data.Dataset:
    """One shard's (encoded image, 0-based label) pairs; fails naming the shard when it is damaged.

    Records are read in groups, counted, parsed and checked a group at a time: a dataset step or
    a check per record would cost more than reading it.

    Args:
        path, size, expected: the shard, its size in bytes, the records written (-1: unknown).
        num_classes, label_offset: labels must lie in [0, num_classes) once the offset is taken off.
    """
    # A read error ends the shard here; the byte count below then names it, TensorFlow would not.
    read = tf.data.TFRecordDataset(path, buffer_size=buffer_size).ignore_errors().batch(_GROUP)
    end = tf.data.Dataset.from_tensors((tf.constant([], tf.string), True))  # marks the end of the shard
    tagged = read.map(lambda group: (group, False)).concatenate(end)

    def count(state, element):
        group, last = element
        n = state[0] + tf.size(group, tf.int64)
        nbytes = state[1] + tf.reduce_sum(tf.cast(tf.strings.length(group), tf.int64) + RECORD_OVERHEAD)
        return (n, nbytes), (group, last, n, nbytes)

    def incomplete(n, nbytes):
        cut = tf.strings.join([
            "shard ", path, " is damaged: its records end at byte ", tf.strings.as_string(nbytes), " of ",
            tf.strings.as_string(size), " (a record cut short or corrupted, e.g. by an interrupted copy); ",
            _REFETCH])
        short = tf.strings.join([
            "shard ", path, " holds ", tf.strings.as_string(n), " records but the converter wrote ",
            tf.strings.as_string(expected), f" ({LABELS_FILE}); ", _REFETCH])
        return tf.where(tf.equal(nbytes, size), short, cut)

    def not_last(group, last, n, nbytes):
        complete = tf.equal(nbytes, size) & (tf.equal(expected, -1) | tf.equal(n, expected))
        return tf.logical_not(last) & _check(tf.logical_not(last) | complete, lambda: incomplete(n, nbytes))

    spec = {"image/encoded": tf.io.FixedLenFeature([], tf.string, default_value=""),
            "image/class/label": tf.io.FixedLenFeature([], tf.int64, default_value=_MISSING_LABEL)}

    def parse(group, last, n, nbytes):
        example = tf.io.parse_example(group, spec)  # defaults, so a missing key is named below
        encoded, raw = example["image/encoded"], example["image/class/label"]
        label = raw - label_offset
        has_image, has_label = tf.strings.length(encoded) > 0, tf.not_equal(raw, _MISSING_LABEL)
        good = has_image & has_label & (label >= 0) & (label < num_classes)

        def bad_record():
            first = tf.argmin(tf.cast(good, tf.int32))
            return _bad_record(path, has_image[first], has_label[first], raw[first], num_classes, label_offset)

        ok = _check(tf.reduce_all(good), bad_record)
        with tf.control_dependencies([ok]):
            return tf.identity(encoded), tf.cast(label, tf.int32)

    zero = (tf.constant(0, tf.int64), tf.constant(0, tf.int64))
    return tagged.scan(zero, count).filter(not_last).map(parse).unbatch()


def _bad_record(path, has_image, has_label, raw, num_classes: int, label_offset: int):
    """The message for a record without a key or with a label outside [0, num_classes)."""
    no_key = tf.strings.join(["shard ", path, " has a record without feature '",
                              tf.where(has_image, "image/class/label", "image/encoded"), "'; ", _KEYS_FIX])
    label = raw - label_offset
    after = f" (minus data.label_offset {label_offset})" if label_offset else ""
    hint = tf.where(tf.equal(label, num_classes),
                    f"; the labels look 1-based: set data.label_offset={label_offset + 1}",
                    f"; labels must be 0..{num_classes - 1} for {num_classes} classes: fix the shard's labels "
                    "or the class count (labels.json or data.num_classes)")
    if label_offset:
        hint = tf.where(tf.equal(label, -1), f"; the labels look {label_offset - 1}-based: set "
                        f"data.label_offset={label_offset - 1}", hint)
    bad_label = tf.strings.join(["shard ", path, ": label ", tf.strings.as_string(raw), after,
                                 f" is outside [0, {num_classes})", hint])
    return tf.where(has_image & has_label, bad_label, no_key)
