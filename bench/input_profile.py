"""Why an input-pipeline goal was missed: where each pipeline spends its time.

Two kinds of evidence, attached to the missed figures in the JSON and printed to stderr:
    profile: a TF profiler trace of a few batches of each pipeline, summed per op type
        (DecodeAndCropJpeg, ResizeBilinear, ReverseV2, ...) as milliseconds per image.
    stages: CPU milliseconds per image of each step run on its own (full decode,
        crop-window decode, resize, the batch flip), which bounds the ratios any scheduling
        could reach: a pipeline cannot beat the sum of the work it must do.
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


def stage_costs(jpeg_dir: Path, batch: int) -> dict[str, float]:
    """CPU ms per image (all threads) of each processing step run on its own.

    Each step runs as a sequential tf.data map reduced inside TensorFlow, so no Python or
    function-call overhead is counted; differences between steps are the steps' own cost.
    """
    from launcher.config import DataConfig
    from training.data.pipeline import _crop_window
    from training.keras_compat import tf

    files = sorted(str(f) for f in Path(jpeg_dir).rglob("*.jpg"))[:STAGE_IMAGES]
    encoded = tf.data.Dataset.from_tensor_slices([tf.io.read_file(f) for f in files]).cache().enumerate()
    data = DataConfig(image_size=224)

    def crop_decode(index, contents):
        seed = tf.stack([tf.constant(0, tf.int64), index])
        window = _crop_window(tf.io.extract_jpeg_shape(contents), data, True, seed)
        return tf.io.decode_and_crop_jpeg(contents, window, channels=3)

    steps = {
        "full_decode": lambda i, c: tf.io.decode_jpeg(c, channels=3),
        "crop_window_decode": crop_decode,
        "crop_window_decode_resize": lambda i, c: tf.image.resize(crop_decode(i, c), [224, 224]),
        "keras_decode_resize": lambda i, c: tf.image.resize(
            tf.io.decode_image(c, channels=3, expand_animations=False), [224, 224]),
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

    costs = {name: cpu_ms(encoded.map(fn), len(files)) for name, fn in steps.items()}
    batches = tf.data.Dataset.from_tensors(tf.zeros([batch, 224, 224, 3])).repeat(4)
    costs["flip_map_on_batch"] = cpu_ms(batches.map(tf.image.random_flip_left_right), 4 * batch)
    return costs


def explain(paths: dict, batch: int, shuffle_buffer: int) -> dict:
    """Profiles the three timed pipelines and the single steps; logs and returns the summary."""
    from bench.input_pipeline import pipelines

    makers = pipelines(paths, batch, shuffle_buffer)
    evidence = {"profile": {}}
    for name in ("project_flip", "keras_flip", "decode"):
        evidence["profile"][name] = profile_pipeline(makers[name](), batch)
        log(f"profile {name}: {evidence['profile'][name]}")
    evidence["stages_cpu_ms_per_img"] = stage_costs(paths["jpeg"], batch)
    log(f"single-step CPU ms per image: {evidence['stages_cpu_ms_per_img']}")
    return evidence
