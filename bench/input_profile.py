"""Why an input-pipeline goal was missed: where each pipeline spends its time.

Two kinds of evidence, attached to the missed figures in the JSON and printed to stderr:
    profile: a TF profiler trace of a few batches of each pipeline, summed per op type
        (DecodeAndCropJpeg, ResizeBilinear, ...) as milliseconds per image.
    stages: CPU milliseconds per image of each step run on its own (full decode, crop-window
        decode, the same at reduced DCT scale, resize, the uint8 cast), per photo size, which
        bounds the ratios any scheduling could reach: a pipeline cannot beat the sum of the
        work it must do.
"""
from __future__ import annotations

import collections
import re
import tempfile
import time
from pathlib import Path

from bench.common import log

PROFILED_BATCHES = 6
_OP_EVENT = re.compile(r"^[\w/.\-]+:\w+$")  # scope/name:OpType; not executor or iterator events
STAGE_IMAGES = 100


def summarise_trace(logdir: Path, images: int, top: int = 10) -> dict[str, float]:
    """Total time per TF op type in the newest trace under `logdir`, in ms per image.

    Op events are named `scope/name:OpType`; framework events (iterators, executors) nest
    around them and would count time twice, so only op events are summed.
    """
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    traces = sorted(Path(logdir).rglob("*.xplane.pb"), key=lambda p: p.stat().st_mtime)
    if not traces:
        return {}
    space = xplane_pb2.XSpace()
    space.ParseFromString(traces[-1].read_bytes())
    per_op: collections.Counter = collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if _OP_EVENT.match(name):
                    per_op[name.rsplit(":", 1)[1]] += event.duration_ps / 1e9
    return {op: round(ms / images, 4) for op, ms in per_op.most_common(top)}


def profile_pipeline(ds, batch: int, warmup: int = 4) -> dict:
    """Traces PROFILED_BATCHES batches of `ds` after a warm-up."""
    from training.keras_compat import tf

    iterator = iter(ds)
    for _ in range(warmup):
        next(iterator)
    with tempfile.TemporaryDirectory(prefix="bench-trace-") as logdir:
        tf.profiler.experimental.start(logdir)
        cpu = time.process_time()
        for _ in range(PROFILED_BATCHES):
            next(iterator)
        cpu = time.process_time() - cpu
        tf.profiler.experimental.stop()
        images = PROFILED_BATCHES * batch
        ops = summarise_trace(Path(logdir), images)
    del iterator
    return {"process_cpu_ms_per_img": round(1e3 * cpu / images, 3), "op_ms_per_img": ops}


def stage_costs(jpeg_dir: Path) -> dict[str, float]:
    """CPU ms per image (all threads) of each processing step run on its own.

    Each step runs as a sequential tf.data map reduced inside TensorFlow, so no Python or
    function-call overhead is counted; differences between steps are the steps' own cost.
    """
    from core.config import DataConfig
    from training.data.pipeline import crop_window, decode_jpeg_window
    from training.keras_compat import tf

    files = sorted(str(f) for f in Path(jpeg_dir).rglob("*.jpg"))[:STAGE_IMAGES]
    encoded = tf.data.Dataset.from_tensor_slices([tf.io.read_file(f) for f in files]).cache().enumerate()
    data = DataConfig(image_size=224)

    def crop_decode(index, contents, dct_scaling=False):
        seed = tf.stack([tf.constant(0, tf.int64), index])
        window = crop_window(tf.io.extract_jpeg_shape(contents), data, True, seed)
        return decode_jpeg_window(contents, window, 224, dct_scaling)

    def resized(image):
        return tf.image.resize(image, [224, 224])

    steps = {
        "full_decode": lambda i, c: tf.io.decode_jpeg(c, channels=3),
        "crop_window_decode": crop_decode,
        "crop_window_decode_dct_scaled": lambda i, c: crop_decode(i, c, True),
        "crop_window_decode_dct_scaled_resize": lambda i, c: resized(crop_decode(i, c, True)),
        "crop_window_decode_dct_scaled_resize_uint8": lambda i, c: tf.cast(
            tf.round(resized(crop_decode(i, c, True))), tf.uint8),
        "keras_decode_resize": lambda i, c: resized(tf.io.decode_image(c, channels=3, expand_animations=False)),
    }

    def cpu_ms(ds, images):
        count = lambda: ds.reduce(tf.constant(0, tf.int32), lambda n, x: n + tf.shape(x)[0])  # noqa: E731
        count()  # warm: fills the cache, builds the functions
        best = float("inf")
        for _ in range(3):
            start = time.process_time()
            count()
            best = min(best, time.process_time() - start)
        return round(1e3 * best / images, 4)

    return {name: cpu_ms(encoded.map(fn), len(files)) for name, fn in steps.items()}


PROFILED = ("project_small", "project_small_stored_small", "decode_small", "keras_small", "project_2mp",
            "decode_2mp", "keras_2mp")


def explain(sets: dict, batch: int, shuffle_buffer: int) -> dict:
    """Profiles the timed pipelines and the single steps; logs and returns the summary."""
    from bench.input_pipeline import pipelines

    makers = pipelines(sets, batch, shuffle_buffer)
    evidence = {"profile": {}, "stages_cpu_ms_per_img": {}}
    for name in PROFILED:
        evidence["profile"][name] = profile_pipeline(makers[name](), batch)
        log(f"profile {name}: {evidence['profile'][name]}")
    for size, paths in sets.items():
        for folder in ("jpeg",):
            costs = evidence["stages_cpu_ms_per_img"][size] = stage_costs(paths[folder])
            log(f"single-step CPU ms per image, {size} photos: {costs}")
    return evidence
