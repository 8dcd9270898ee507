"""The image task: TFRecord shards, a class-folder tree or synthetic images into a Keras
Applications base (or the small CNN) with augmentation and preprocessing inside the model."""
from __future__ import annotations

from pathlib import Path

from training import evaluate
from training.tasks import Task


class ImageTask(Task):
    def prepare(self, run_dir: Path, backend):
        from training.data.pipeline import dataset_info  # defers TensorFlow

        return dataset_info(self.cfg.data)

    def build_model(self, plan, seed: int):
        from training.models import build_model  # defers TensorFlow

        return build_model(self.cfg.model, self.cfg.augment, self.cfg.data.image_size, plan.num_classes,
                           seed=seed)

    def build_dataset(self, split: str, training: bool, batch_size: int, input_context=None, seed: int = 0):
        from training.data.pipeline import build_dataset  # defers TensorFlow

        return build_dataset(self.cfg.data, split, training, batch_size, input_context, seed)

    def shard_files(self, input_context=None) -> list[str]:
        from training.data.pipeline import shard_files  # defers TensorFlow

        return shard_files(self.cfg.data, "train", input_context)

    def model_spec(self, plan) -> dict:
        cfg = self.cfg
        return {"task": "image", "architecture": cfg.model.name, "image_size": cfg.data.image_size,
                "channel_order": cfg.model.channel_order, "mean": cfg.model.mean, "std": cfg.model.std,
                "classes": list(plan.class_names), "num_classes": plan.num_classes,
                "input": "float32 RGB 0..255, preprocessing inside the model"}

    def final_report(self, run_dir: Path, model, plan, checkpoint: str) -> dict:
        val = self.build_dataset("val", False, plan.global_batch_size, None, self.cfg.train.seed)
        evaluate.report(run_dir, checkpoint, val, list(plan.class_names), model=model)
        return {}
