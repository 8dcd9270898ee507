"""Input pipeline throughput: the project's TFRecord pipeline against two references.

    python -m bench.input_pipeline [--images 2000] [--photos-2mp 300] [--max-side 384]
        [--batch 64] [--batches 12] [--rounds 3]

Every pipeline produces batches of 224x224 training images as training consumes them: no flip
map on the CPU (the flip runs inside the model, on the accelerator). Three kinds:
    project: `training.data.pipeline.build_dataset` over converted shards in training mode
        (decode of the crop window, at reduced DCT scale when it is >= 2x the target, random-
        resized crop, resize, uint8 batches), on shards stored as they are and stored
        downscaled (`python -m training.data.convert --max-side N`).
    keras: `tf_keras.utils.image_dataset_from_directory` on the class-folder tree of the
        original JPEGs (read the file, decode the whole image, resize), prefetch.
    decode: a ceiling: parse the same records and `tf.io.decode_jpeg` the whole stored image,
        nothing else.
on two photo sizes: the 500x375 set and 2-megapixel (1600x1200) photos. Each round builds every
pipeline afresh, warms it up, then times a fixed number of batches; rounds rotate the order.
Figures in images per CPU-second of this process (steady on a busy shared machine; goals):
project stored downscaled / keras >= 3 (500x375) and >= 5 (2-MP photos), project / decode of
the same shards >= 0.9; and, reported, the same in images/s of wall time and the project on
shards stored as they are.
When a goal is missed, a per-stage breakdown and a TF profiler summary are attached.
"""
from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

from bench.common import Figure, best_rate, log, ratio_figure, report, standard_parser, work_dir

SIZE = 224  # model input side, pixels


def project_dataset(shards: Path, batch: int, shuffle_buffer: int, seed: int = 0):
    """The project pipeline as a training run builds it."""
    from core.config import DataConfig
    from training.data.pipeline import build_dataset

    data = DataConfig(source="tfrecord", data_dir=str(shards), image_size=SIZE, batch_size=batch,
                      shuffle_buffer=shuffle_buffer)
    return build_dataset(data, "train", True, batch, None, seed)


def keras_dataset(folder: Path, batch: int, seed: int = 0):
    """What the Keras tutorials do: image_dataset_from_directory, prefetch."""
    from training.keras_compat import keras, tf

    with contextlib.redirect_stdout(sys.stderr):  # it prints "Found N files"; stdout is for figures
        ds = keras.utils.image_dataset_from_directory(str(folder), image_size=(SIZE, SIZE),
                                                      batch_size=batch, seed=seed)
    return ds.repeat().prefetch(tf.data.AUTOTUNE)


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


def pipelines(sets: dict, batch: int, shuffle_buffer: int) -> dict:
    """name -> function building that dataset afresh; `sets` as `bench.data.prepare_input_sets`."""
    makers = {}
    for size, paths in sets.items():
        buffer = min(shuffle_buffer, paths.get("images", shuffle_buffer))
        makers.update({
            f"project_{size}": lambda p=paths, b=buffer: project_dataset(p["shards"], batch, b),
            f"project_{size}_stored_small": lambda p=paths, b=buffer: project_dataset(p["shards_small"], batch, b),
            f"keras_{size}": lambda p=paths: keras_dataset(p["jpeg"], batch),
            f"decode_{size}": lambda p=paths: decode_dataset(p["shards"], batch),
            f"decode_{size}_stored_small": lambda p=paths: decode_dataset(p["shards_small"], batch),
        })
    return makers


def measure(sets: dict, batch: int, warmup: int, batches: int, rounds: int, shuffle_buffer: int) -> dict:
    """Interleaved rounds of every pipeline, the order rotating each round.

    Returns:
        {"img_per_s": {name: [per round]}, "cpu_ms_per_img": {name: [per round]}}
    """
    makers = pipelines(sets, batch, shuffle_buffer)
    names = list(makers)
    rates = {name: [] for name in names}
    cpu = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            rate, ms = images_per_second(makers[name](), batch, warmup, batches)
            rates[name].append(round(rate, 2))
            cpu[name].append(round(ms, 4))
            log(f"input pipeline round {r + 1}/{rounds}: {name:<28} {rate:7.1f} img/s, {ms:.2f} CPU ms/img")
    return {"img_per_s": rates, "cpu_ms_per_img": cpu}


def figures(measured: dict, max_side: int) -> list[Figure]:
    wall = {name: best_rate(rounds) for name, rounds in measured["img_per_s"].items()}
    # Images per CPU-second: what a pipeline costs, steady however busy the machine is.
    cpu = {name: 1e3 / min(rounds) for name, rounds in measured["cpu_ms_per_img"].items()}
    small = f"stored downscaled (max side {max_side})"
    out = []
    for per, rates, unit, goals in (("cpu_", cpu, "img/cpu-s", True), ("wall_", wall, "img/s", False)):
        def fig(name, value, baseline, goal, what):
            out.append(ratio_figure(f"input_pipeline.{per}{name}", rates[value], rates[baseline], unit,
                                    goal if goals else None, what, measured))

        fig("stored_small_vs_keras", "project_small_stored_small", "keras_small", 3.0,
            f"500x375 photos: project pipeline on shards {small} vs image_dataset_from_directory on the JPEGs")
        fig("vs_keras", "project_small", "keras_small", None,
            "500x375 photos: project pipeline on shards as stored vs image_dataset_from_directory")
        fig("vs_decode", "project_small", "decode_small", 0.9,
            "500x375 photos: project pipeline vs parse + full JPEG decode of the same shards (ceiling)")
        fig("stored_small_vs_decode", "project_small_stored_small", "decode_small_stored_small", 0.9,
            f"500x375 photos {small}: project pipeline vs parse + full decode of the same shards")
        fig("2mp_stored_small_vs_keras", "project_2mp_stored_small", "keras_2mp", 5.0,
            f"1600x1200 photos: project pipeline on shards {small} vs image_dataset_from_directory")
        fig("2mp_vs_keras", "project_2mp", "keras_2mp", None,
            "1600x1200 photos: project pipeline on shards as stored vs image_dataset_from_directory")
        fig("2mp_vs_decode", "project_2mp", "decode_2mp", 0.9 if goals else None,
            "1600x1200 photos: project pipeline vs parse + full decode of the same shards")
    return out


def main(argv=None) -> int:
    parser = standard_parser("python -m bench.input_pipeline", __doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="500x375 JPEGs to generate (default 2000)")
    parser.add_argument("--photos-2mp", type=int, default=300,
                        help="1600x1200 JPEGs to generate (default 300)")
    parser.add_argument("--max-side", type=int, default=384,
                        help="longer side of the shards stored downscaled (default 384)")
    parser.add_argument("--batch", type=int, default=64, help="images per batch (default 64)")
    parser.add_argument("--warmup", type=int, default=4, help="untimed batches per round (default 4)")
    parser.add_argument("--batches", type=int, default=12, help="timed batches per round (default 12)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--shuffle-buffer", type=int, default=1000,
                        help="project pipeline example shuffle buffer (default 1000)")
    args = parser.parse_args(argv)

    from bench.data import prepare_input_sets

    with work_dir(args.work_dir) as work:
        sets = prepare_input_sets(work, images=args.images, photos_2mp=args.photos_2mp, max_side=args.max_side)
        sets["small"]["images"], sets["2mp"]["images"] = args.images, args.photos_2mp
        rates = measure(sets, args.batch, args.warmup, args.batches, args.rounds, args.shuffle_buffer)
        result = figures(rates, args.max_side)
        if any(f.passed is False for f in result):
            from bench.input_profile import explain

            evidence = explain(sets, args.batch, args.shuffle_buffer)
            for f in result:
                if f.passed is False:
                    f.evidence = evidence
        report(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
