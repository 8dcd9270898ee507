"""Input pipeline throughput: the project's TFRecord pipeline against two references.

    python -m bench.input_pipeline [--images 2000] [--batch 64] [--batches 24] [--rounds 3]

Three pipelines read the same generated JPEGs and produce batches of 224x224 training images:
    project: `training.data.pipeline.build_dataset` over the converted shards in training mode
        (decode only the crop window, random-resized crop, resize), plus the horizontal flip
        that in a real run lives in the model, as a `tf.image.random_flip_left_right` map.
    keras: `tf_keras.utils.image_dataset_from_directory` on the class-folder tree (read the
        file, decode the whole image, resize), the same flip map, prefetch.
    decode: a ceiling: parse the same records and `tf.io.decode_jpeg` the whole image, nothing
        else (no crop, no resize), batched as ragged tensors.
Each round builds every pipeline afresh, warms it up, then times a fixed number of batches;
rounds rotate the order. Figures: project/keras (goal >= 2.0), project/decode (goal >= 0.9),
in images/s; and, reported, the same comparisons without the flip map in images per
CPU-second of this process, which a busy shared machine does not distort.
When a goal is missed, a per-stage breakdown and a TF profiler summary are attached.
"""
from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

from bench.common import Figure, best_rate, log, ratio_figure, report, standard_parser, work_dir

SIZE = 224  # model input side, pixels


def _flip(images, labels):
    from training.keras_compat import tf

    return tf.image.random_flip_left_right(images), labels


def project_dataset(shards: Path, batch: int, shuffle_buffer: int, seed: int = 0, flip: bool = True):
    """The project pipeline as a training run builds it, plus (`flip`) the model's flip."""
    from launcher.config import DataConfig
    from training.data.pipeline import build_dataset
    from training.keras_compat import tf

    data = DataConfig(source="tfrecord", data_dir=str(shards), image_size=SIZE, batch_size=batch,
                      shuffle_buffer=shuffle_buffer)
    ds = build_dataset(data, "train", True, batch, None, seed)
    return ds.map(_flip, num_parallel_calls=tf.data.AUTOTUNE) if flip else ds


def keras_dataset(folder: Path, batch: int, seed: int = 0, flip: bool = True):
    """What the Keras tutorials do: image_dataset_from_directory, flip (`flip`), prefetch."""
    from training.keras_compat import keras, tf

    with contextlib.redirect_stdout(sys.stderr):  # it prints "Found N files"; stdout is for figures
        ds = keras.utils.image_dataset_from_directory(str(folder), image_size=(SIZE, SIZE),
                                                      batch_size=batch, seed=seed)
    ds = ds.repeat()
    if flip:
        ds = ds.map(_flip, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def _records(shards: Path):
    from training.keras_compat import tf

    files = sorted(str(p) for p in Path(shards).glob("train-*"))
    return tf.data.Dataset.from_tensor_slices(files).repeat().interleave(
        tf.data.TFRecordDataset, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)


def _parse(record):
    from training.keras_compat import tf

    spec = {"image/encoded": tf.io.FixedLenFeature([], tf.string),
            "image/class/label": tf.io.FixedLenFeature([], tf.int64)}
    example = tf.io.parse_single_example(record, spec)
    return example["image/encoded"], example["image/class/label"]


def decode_dataset(shards: Path, batch: int):
    """The ceiling: parse + full decode of the same records, nothing else.

    Each decoded image is reduced to its shape and one pixel before batching: the decode runs
    in full, but the measurement carries no batching or copying cost the other pipelines would
    not also pay, so it is a true upper bound.
    """
    from training.keras_compat import tf

    def decode(record):
        encoded, label = _parse(record)
        image = tf.io.decode_jpeg(encoded, channels=3)
        return tf.concat([tf.shape(image), tf.cast(image[0, 0], tf.int32)], 0), label

    ds = _records(shards).map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    return ds.batch(batch).prefetch(tf.data.AUTOTUNE)


def images_per_second(ds, batch: int, warmup: int, batches: int) -> tuple[float, float]:
    """Times `batches` batches after `warmup`, on a fresh iterator.

    Returns:
        (images per second, CPU milliseconds this process spent per image). The second is
        what the pipeline costs regardless of how busy the shared machine was.
    """
    iterator = iter(ds)
    for _ in range(warmup):
        next(iterator)
    cpu, start = time.process_time(), time.perf_counter()
    for _ in range(batches):
        next(iterator)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    del iterator  # stops its background threads before the next pipeline is timed
    images = batches * batch
    return images / seconds, 1e3 * cpu / images


def pipelines(paths: dict, batch: int, shuffle_buffer: int) -> dict:
    """name -> function building that dataset afresh."""
    return {
        "project_flip": lambda: project_dataset(paths["shards"], batch, shuffle_buffer),
        "keras_flip": lambda: keras_dataset(paths["jpeg"], batch),
        "decode": lambda: decode_dataset(paths["shards"], batch),
        "project": lambda: project_dataset(paths["shards"], batch, shuffle_buffer, flip=False),
        "keras": lambda: keras_dataset(paths["jpeg"], batch, flip=False),
    }


def measure(paths: dict, batch: int, warmup: int, batches: int, rounds: int, shuffle_buffer: int) -> dict:
    """Interleaved rounds of every pipeline, the order rotating each round.

    Returns:
        {"img_per_s": {name: [per round]}, "cpu_ms_per_img": {name: [per round]}}
    """
    makers = pipelines(paths, batch, shuffle_buffer)
    names = list(makers)
    rates = {name: [] for name in names}
    cpu = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            rate, ms = images_per_second(makers[name](), batch, warmup, batches)
            rates[name].append(round(rate, 2))
            cpu[name].append(round(ms, 4))
            log(f"input pipeline round {r + 1}/{rounds}: {name:<12} {rate:7.1f} img/s, {ms:.2f} CPU ms/img")
    return {"img_per_s": rates, "cpu_ms_per_img": cpu}


def figures(measured: dict) -> list[Figure]:
    best = {name: best_rate(rounds) for name, rounds in measured["img_per_s"].items()}
    # Images per CPU-second: what a pipeline costs, steady however busy the machine is.
    per_cpu_s = {name: 1e3 / min(rounds) for name, rounds in measured["cpu_ms_per_img"].items()}
    flip = "+ flip map on the batch"
    return [
        ratio_figure("input_pipeline.project_vs_keras", best["project_flip"], best["keras_flip"], "img/s",
                     2.0, f"project TFRecord pipeline vs image_dataset_from_directory, both {flip}",
                     measured),
        ratio_figure("input_pipeline.project_vs_decode", best["project_flip"], best["decode"], "img/s", 0.9,
                     f"project pipeline {flip} vs parse + full JPEG decode only (ceiling)", measured),
        ratio_figure("input_pipeline.cpu_project_vs_keras_noflip", per_cpu_s["project"], per_cpu_s["keras"],
                     "img/cpu-s", None, "images per CPU-second, both pipelines without the flip map",
                     measured),
        ratio_figure("input_pipeline.cpu_project_vs_decode_noflip", per_cpu_s["project"], per_cpu_s["decode"],
                     "img/cpu-s", None, "images per CPU-second, project pipeline without the flip map vs "
                     "parse + decode", measured),
    ]


def main(argv=None) -> int:
    parser = standard_parser("python -m bench.input_pipeline", __doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="JPEGs to generate (default 2000)")
    parser.add_argument("--batch", type=int, default=64, help="images per batch (default 64)")
    parser.add_argument("--warmup", type=int, default=4, help="untimed batches per round (default 4)")
    parser.add_argument("--batches", type=int, default=12, help="timed batches per round (default 12)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--shuffle-buffer", type=int, default=1000,
                        help="project pipeline example shuffle buffer (default 1000)")
    args = parser.parse_args(argv)

    from bench.data import prepare

    with work_dir(args.work_dir) as work:
        paths = prepare(work, images=args.images)
        rates = measure(paths, args.batch, args.warmup, args.batches, args.rounds, args.shuffle_buffer)
        result = figures(rates)
        if any(f.passed is False for f in result):
            from bench.input_profile import explain

            evidence = explain(paths, args.batch, args.shuffle_buffer)
            for f in result:
                if f.passed is False:
                    f.evidence = evidence
        report(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
