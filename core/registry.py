"""Every name a config may choose, in one TF-free table.

`launch` validates configs against it on the login node (dry runs too); the training side looks
its builders up by these names (training/tasks, training/models.py, training/text_models.py,
training/optim.py, training/backends), and tests/test_registry.py asserts that those builders
cover exactly the names listed here, so the two sides cannot drift apart.
"""
from __future__ import annotations

from dataclasses import dataclass

BACKENDS = ("mirrored", "multiworker", "horovod")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cyclic_decay", "smooth_decay", "cosine", "step")


@dataclass(frozen=True)
class TaskEntry:
    """What one task offers: its models, data sources and the config keys that are its own.

    `own_keys` maps a section to the keys only this task reads (None: the whole section). A
    config that sets another task's own keys is refused: they would be ignored without a word.
    """

    models: tuple[str, ...]
    default_model: str
    sources: tuple[str, ...]
    own_keys: dict[str, tuple[str, ...] | None]
    checked_layouts: tuple[str, ...] = ()  # sources whose shard manifest / class folders launcher/preflight.py checks


TASKS: dict[str, TaskEntry] = {
    "image": TaskEntry(
        models=("vgg16", "vgg19", "resnet50", "resnet101", "mobilenetv2", "efficientnetb0", "small_cnn"),
        default_model="vgg19",
        sources=("demo", "tfrecord", "folder", "synthetic"),
        own_keys={"augment": None,
                  "data": ("image_size", "min_crop_area", "val_crop_fraction", "synthetic_examples",
                           "synthetic_classes", "label_offset", "num_classes"),
                  "model": ("weights", "head_units", "trainable_layers", "channel_order", "mean", "std")},
        checked_layouts=("tfrecord", "folder")),
    "text": TaskEntry(
        models=("lstm", "gru", "bag_of_embeddings"),
        default_model="lstm",
        sources=("demo", "tfrecord", "folder", "csv", "jsonl"),
        own_keys={"text": None, "data": ("text_column", "label_column", "val_fraction", "classes")},
        checked_layouts=("tfrecord",)),  # shards and their manifest are checked alike
}


def task_entry(task: str) -> TaskEntry:
    return TASKS[task]


def owner_of(section: str, key: str) -> str | None:
    """The task whose own key `section.key` is, or None when every task reads it."""
    for name, entry in TASKS.items():
        if section in entry.own_keys and (entry.own_keys[section] is None or key in entry.own_keys[section]):
            return name
    return None
