"""The text task: labelled texts -> tokenizer (adapted once, saved in the run) -> lstm / gru /
bag-of-embeddings classifier; its report lists the most confident right and wrong texts."""
from __future__ import annotations

from pathlib import Path

from core import rundir
from training.data.records import skipped_line, write_skipped
from training.inference import text_classifier
from training.tasks import Task


class TextTask(Task):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.vectorize = None  # the TextVectorization layer, once prepared
        self.tokenizer = {}  # its saved settings and vocabulary
        self.tokenizer_sha256 = ""
        self.embedding_hits = None  # vocabulary words found in text.embeddings_file

    def prepare(self, run_dir: Path, backend):
        from training import tokenizer  # defers TensorFlow
        from training.data.text_pipeline import skipped_texts, text_dataset, text_info  # defers TensorFlow
        from training.embeddings import check_dim  # defers NumPy

        if self.cfg.text.embeddings_file:
            check_dim(self.cfg.text.embeddings_file, self.cfg.text.embedding_dim)  # before minutes of adapting
        info = text_info(self.cfg.data)

        def train_texts():
            return text_dataset(self.cfg.data, "train", False).map(lambda t, _: t)

        log = print if backend.is_chief else (lambda _: None)
        skipped = skipped_texts(self.cfg.data)
        if skipped is not None and backend.is_chief:  # only the chief writes the run's files
            write_skipped(run_dir, skipped)
            log(f"[train] {self.cfg.data.data_dir}: {skipped_line(skipped, rundir.RunDir(run_dir).skipped)}")
        self.vectorize, self.tokenizer, self.tokenizer_sha256 = tokenizer.prepare(
            run_dir, self.cfg.text, train_texts, backend.is_chief, log=lambda line: log(f"[train] {line}"))
        log(f"[train] tokenizer {tokenizer.tokenizer_path(run_dir)} sha256 {self.tokenizer_sha256}")
        return info

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer["vocabulary"])

    def build_model(self, plan, seed: int):
        from training.embeddings import embedding_matrix  # defers NumPy
        from training.text_models import build_text_model  # defers TensorFlow

        matrix = None
        if self.cfg.text.embeddings_file:
            matrix, self.embedding_hits = embedding_matrix(self.cfg.text.embeddings_file, self.tokenizer["vocabulary"],
                                                           self.cfg.text.embedding_dim)
            print(f"[train] embeddings: {self.embedding_hits} of {self.vocab_size} vocabulary words found in "
                  f"{self.cfg.text.embeddings_file}", flush=True)
        return build_text_model(self.cfg.model, self.cfg.text, self.vocab_size, plan.num_classes, matrix)

    def build_dataset(self, split: str, training: bool, batch_size: int, input_context=None, seed: int = 0):
        from training.data.text_pipeline import text_dataset, token_batches  # defers TensorFlow

        return token_batches(text_dataset(self.cfg.data, split, training, input_context, seed), self.vectorize,
                             batch_size, training)

    def shard_files(self, input_context=None) -> list[str]:
        from training.data.text_pipeline import train_files  # defers TensorFlow

        return train_files(self.cfg.data, input_context)

    def model_spec(self, plan) -> dict:
        from training.text_models import model_parameters  # defers TensorFlow

        return {"task": "text", "architecture": self.cfg.model.name, "classes": list(plan.class_names),
                "num_classes": plan.num_classes, "tokenizer": f"{rundir.MODEL}/{rundir.TOKENIZER}",
                "tokenizer_sha256": self.tokenizer_sha256, "sequence_length": self.cfg.text.sequence_length,
                "model_parameters": model_parameters(self.cfg.model, self.cfg.text, self.vocab_size,
                                                     plan.num_classes),
                "embedding_hits": self.embedding_hits,
                "input": "int32 token ids from the tokenizer; raw texts go through tokenizer.json first"}

    def final_report(self, run_dir: Path, model, plan, checkpoint: str) -> dict:
        from training.data.text_pipeline import text_dataset  # defers TensorFlow
        from training.report.text_predictions import write_text_report  # defers NumPy
        from training.text_models import model_parameters  # defers TensorFlow

        val = text_dataset(self.cfg.data, "val", False).batch(plan.global_batch_size)
        result = write_text_report(run_dir, text_classifier(model, self.vectorize), val, list(plan.class_names),
                                   checkpoint=checkpoint)
        files = result["files"]
        return {"task": "text_classification", "task_type": "text", "accuracy": result["accuracy"],
                "model_parameters": model_parameters(self.cfg.model, self.cfg.text, self.vocab_size, plan.num_classes),
                "tokenizer_path": f"{rundir.MODEL}/{rundir.TOKENIZER}", "tokenizer_sha256": self.tokenizer_sha256,
                "model_path": f"{rundir.MODEL}/{rundir.FINAL_MODEL}", "plot_path": f"{rundir.REPORT}/accuracy.png",
                "confident_texts": files["texts"], "classes": list(plan.class_names),
                "embedding_hits": self.embedding_hits}
