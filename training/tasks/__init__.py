"""Tasks: what is trained on what. One class per kind of problem, looked up by `cfg.task`.

A task reads its data, builds its model, describes it in model_spec.json and writes its
prediction report. The loop, backends, checkpoints, preemption, TensorBoard and the summary are
shared (training/loop.py) and never ask which task runs.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from core.config import Config


class Task:
    """The interface every task implements. Only the chief writes files (`is_chief` arguments)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg

    def prepare(self, run_dir: Path, backend) -> Any:
        """Reads what the data says (classes, example counts) and sets up anything every worker
        needs before the model is built; returns a DatasetInfo."""
        raise NotImplementedError

    def build_model(self, plan, seed: int):
        """The uncompiled Keras model; called under the backend's strategy scope."""
        raise NotImplementedError

    def build_dataset(self, split: str, training: bool, batch_size: int, input_context=None, seed: int = 0):
        """One input pipeline's `(inputs, labels)` batches of `split` ("train" or "val")."""
        raise NotImplementedError

    def shard_files(self, input_context=None) -> list[str]:
        """The training files this pipeline reads, for the per-rank report."""
        return []

    def model_spec(self, plan) -> dict:
        """What evaluate/predict need to feed a saved model (model/model_spec.json)."""
        raise NotImplementedError

    def final_report(self, run_dir: Path, model, plan, checkpoint: str) -> dict:
        """Chief only: the prediction report of the validation split; returns summary fields."""
        raise NotImplementedError


# core/registry.py TASKS -> "module:class"; imported on use, so an image run never loads text code.
TASK_BUILDERS = {"image": "training.tasks.image:ImageTask", "text": "training.tasks.text:TextTask"}


def create_task(cfg: Config) -> Task:
    module, name = TASK_BUILDERS[cfg.task].split(":")
    return getattr(importlib.import_module(module), name)(cfg)
