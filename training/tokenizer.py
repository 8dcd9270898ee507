"""The text task's tokenizer: a Keras TextVectorization adapted once, on the chief, on the
training split, and saved as one JSON file (settings + vocabulary) in the run directory.

Every worker, a resumed or requeued job, evaluate and predict build the same layer from that
file, so ids never change during a run. The file is not rewritten once it exists.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from core import rundir
from core.config import TextConfig
from core.fsutil import atomic_write_text
from training.data import DataError
from training.keras_compat import keras

WAIT_FOR_CHIEF_S = 1800  # a worker waits this long for the chief's vocabulary (large sets adapt for minutes)


def tokenizer_path(run_dir: Path) -> Path:
    return Path(run_dir) / rundir.MODEL / rundir.TOKENIZER


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def settings(text: TextConfig) -> dict:
    return {"max_tokens": text.max_tokens, "sequence_length": text.sequence_length,
            "standardize": text.standardize, "split": text.split}


def _layer(spec: dict, vocabulary=None) -> keras.layers.TextVectorization:
    return keras.layers.TextVectorization(
        max_tokens=spec["max_tokens"], output_sequence_length=spec["sequence_length"],
        standardize=None if spec["standardize"] == "none" else spec["standardize"], split=spec["split"],
        vocabulary=vocabulary)


def adapt(text: TextConfig, texts) -> list[str]:
    """The vocabulary of `texts` (a tf.data dataset of strings): padding "", "[UNK]", then by frequency."""
    layer = _layer(settings(text))
    layer.adapt(texts.batch(1024))
    vocabulary = [str(v) for v in layer.get_vocabulary()]
    if len(vocabulary) <= 2:
        raise DataError(f"the tokenizer found {len(vocabulary) - 2} words in the training texts (vocabulary of "
                        f"{len(vocabulary)} with padding and unknown); check the texts and text.standardize / text.split")
    return vocabulary


def save(path: Path, text: TextConfig, vocabulary: list[str]) -> None:
    atomic_write_text(path, json.dumps({**settings(text), "vocabulary": vocabulary}, ensure_ascii=False) + "\n")


def load(path: Path) -> tuple[keras.layers.TextVectorization, dict]:
    """The layer saved at `path` and its settings (with `vocabulary`)."""
    try:
        spec = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read the tokenizer {path} ({err}); the run's vocabulary is lost, start a new run") from None
    return _layer(spec, spec["vocabulary"]), spec


def prepare(run_dir: Path, text: TextConfig, train_texts, is_chief: bool, log=print):
    """The run's tokenizer: loaded when saved already (a resume), else adapted by the chief and
    saved, while other workers wait for the file.

    Args:
        train_texts: callable returning a tf.data dataset of the training texts (chief only).

    Returns:
        (layer, settings with vocabulary, sha256 of the file).
    """
    path = tokenizer_path(run_dir)
    if not path.is_file():
        if is_chief:
            started = time.time()
            vocabulary = adapt(text, train_texts())
            save(path, text, vocabulary)
            log(f"tokenizer: {len(vocabulary)} tokens adapted in {time.time() - started:.1f} s, saved to {path}")
        else:
            deadline = time.time() + WAIT_FOR_CHIEF_S
            while not path.is_file():
                if time.time() > deadline:
                    raise DataError(f"no tokenizer at {path} after {WAIT_FOR_CHIEF_S} s; the chief did not write "
                                    "it (see its log) or the run directory is not shared between the nodes")
                time.sleep(1)
    layer, spec = load(path)
    if spec["sequence_length"] != text.sequence_length or spec["max_tokens"] != text.max_tokens:
        raise DataError(f"text.sequence_length {text.sequence_length} / text.max_tokens {text.max_tokens} differ "
                        f"from the run's saved tokenizer ({spec['sequence_length']} / {spec['max_tokens']}, {path}); "
                        "resume with the run's values or start a new run")
    return layer, spec, file_sha256(path)
