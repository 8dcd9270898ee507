"""ResNet-50 training throughput on one GPU: synthetic data against the TFRecord pipeline.

    python -m bench.gpu_resnet50 [--batch 256] [--steps 60] [--rounds 2]

The model is the project's (`build_model` with model.name=resnet50, random weights, no extra
head), trained with bfloat16 mixed precision and XLA (`jit_compile`), SGD with momentum,
1000 classes, 224x224. The same compiled model is fitted alternately on synthetic batches
(`data.source synthetic`: the GPU's own ceiling) and on the generated TFRecord shards through
`build_dataset` in training mode; each fit's first epoch (compilation, pipeline warm-up) is
excluded. Figures: synthetic images/s (goal >= 5000 on one H100; NVIDIA's published TF
ResNet-50 on one A100 with AMP and XLA, 2375 img/s, is the baseline shown) and TFRecord /
synthetic (reported).

Without a GPU it prints "GPU figure not measured: no GPU on this machine", runs the same code
for 2 steps at batch 2, 64x64, float32 without XLA so the script is exercised end to end, and
exits 0.
"""
from __future__ import annotations

from pathlib import Path

from bench.common import Figure, best_rate, log, report, standard_parser, work_dir
from core.config import Config

A100_REFERENCE = 2375.0  # img/s, NVIDIA DeepLearningExamples TF ResNet-50 v1.5, 1x A100, AMP + XLA
GOAL = 5000.0  # img/s on one H100
CLASSES = 1000


def resnet_config(shards: Path, size: int, batch: int, precision: str, jit: bool) -> Config:
    cfg = Config()
    cfg.data.source = "tfrecord"
    cfg.data.data_dir = str(shards)
    cfg.data.image_size = size
    cfg.data.batch_size = batch
    cfg.data.shuffle_buffer = 1000
    cfg.data.synthetic_classes = CLASSES
    cfg.model.name = "resnet50"
    cfg.model.weights = None
    cfg.model.head_units = []
    cfg.model.dropout = 0.0
    cfg.model.channel_order = "bgr"  # what keras.applications ResNet50 expects (the default mean)
    cfg.optimizer.name = "sgd"
    cfg.train.precision = precision
    cfg.train.jit_compile = jit
    return cfg


def build(cfg: Config):
    """The compiled model, as training.task builds it, without a strategy (one device)."""
    from training import task
    from training.keras_compat import keras
    from training.models import build_model
    from training.optim import build_optimizer

    keras.backend.clear_session()
    task.set_precision(cfg.train.precision)
    model = build_model(cfg.model, cfg.augment, cfg.data.image_size, CLASSES, seed=0)
    loss, metrics = task.loss_and_metrics(cfg)
    model.compile(optimizer=build_optimizer(cfg.optimizer, 0.1), loss=loss, metrics=metrics,
                  jit_compile=cfg.train.jit_compile)
    return model


def images_per_second(model, ds, batch: int, steps: int) -> float:
    """Fits two epochs of `steps`; images/s of the second."""
    from bench.trainer_overhead import _epoch_clock

    clock = _epoch_clock()
    model.fit(ds, epochs=2, steps_per_epoch=steps, callbacks=[clock], verbose=0)
    return clock.timings(steps)["steps_per_s"] * batch


def measure(cfg: Config, steps: int, rounds: int) -> dict:
    import dataclasses

    from training.data.pipeline import build_dataset

    batch = cfg.data.batch_size
    synthetic = dataclasses.replace(cfg.data, source="synthetic")
    model = build(cfg)
    sources = {"synthetic": lambda: build_dataset(synthetic, "train", True, batch, None, 0),
               "tfrecord": lambda: build_dataset(cfg.data, "train", True, batch, None, 0)}
    rates = {name: [] for name in sources}
    for r in range(rounds):
        for name, make in sources.items():
            rates[name].append(round(images_per_second(model, make(), batch, steps), 2))
            log(f"resnet50 round {r + 1}/{rounds}: {name} {rates[name][-1]:.1f} img/s")
    return {"img_per_s": rates, "batch": batch, "steps": steps, "image_size": cfg.data.image_size,
            "precision": cfg.train.precision, "jit_compile": cfg.train.jit_compile}


def figures(measured: dict | None, why_not: str = "") -> list[Figure]:
    names = ("gpu.resnet50_synthetic", "gpu.resnet50_tfrecord_vs_synthetic")
    if measured is None or why_not:
        samples = measured or {}
        return [Figure(names[0], None, A100_REFERENCE, "img/s", f">= {GOAL:.0f} img/s", None, why_not,
                       samples),
                Figure(names[1], None, None, "img/s", "", None, why_not, samples)]
    synthetic = best_rate(measured["img_per_s"]["synthetic"])
    tfrecord = best_rate(measured["img_per_s"]["tfrecord"])
    return [
        Figure(names[0], synthetic, A100_REFERENCE, "img/s", f">= {GOAL:.0f} img/s", synthetic >= GOAL,
               "ResNet-50 bf16 + XLA, synthetic data, one GPU; baseline: NVIDIA's A100 figure", measured),
        Figure(names[1], tfrecord, synthetic, "img/s", "", None,
               "the same model fed by the project TFRecord pipeline vs synthetic batches", measured),
    ]


def main(argv=None) -> int:
    parser = standard_parser("python -m bench.gpu_resnet50", __doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=256, help="images per step (default 256)")
    parser.add_argument("--steps", type=int, default=60, help="timed steps per fit (default 60)")
    parser.add_argument("--rounds", type=int, default=2, help="synthetic/TFRecord pairs (default 2)")
    parser.add_argument("--images", type=int, default=2000, help="JPEGs to generate (default 2000)")
    parser.add_argument("--no-xla", action="store_true", help="compile without XLA (jit_compile off)")
    args = parser.parse_args(argv)

    from bench.data import prepare
    from training.keras_compat import tf

    gpus = tf.config.list_physical_devices("GPU")
    with work_dir(args.work_dir) as work:
        paths = prepare(work, images=args.images)
        if gpus:
            cfg = resnet_config(paths["shards"], 224, args.batch, "bfloat16", not args.no_xla)
            result = figures(measure(cfg, args.steps, args.rounds))
        else:
            print("GPU figure not measured: no GPU on this machine", flush=True)
            # The same code, tiny, so that the script is known to work before a GPU is at hand.
            cfg = resnet_config(paths["shards"], 64, 2, "float32", False)
            tiny = measure(cfg, steps=2, rounds=1)
            result = figures(tiny, "not measured: no GPU on this machine (a 2-step CPU run passed)")
        report(result, args.json, gpus=[d.name for d in gpus])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
