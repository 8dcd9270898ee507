"""Pretrained word vectors in the GloVe text format (`word v1 ... vd` per line) for the text
task's embedding: rows of words in the vocabulary start from the file, the rest stay random."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from training.data import DataError

SEED = 0


def vector_dim(path: str | Path) -> int:
    """The dimension of the file's first vector; one-line errors for a missing or malformed file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"text.embeddings_file {path} does not exist; give a GloVe-format file or \"\"")
    with open(path, encoding="utf-8", errors="replace") as fh:
        first = fh.readline().rstrip("\n").split(" ")
    if len(first) < 2:
        raise DataError(f"text.embeddings_file {path}: the first line is not `word v1 ... vd`; give a GloVe-format file")
    return len(first) - 1


def check_dim(path: str | Path, embedding_dim: int) -> None:
    dim = vector_dim(path)
    if dim != embedding_dim:
        raise DataError(f"text.embeddings_file {path} holds {dim}-dimensional vectors but text.embedding_dim is "
                        f"{embedding_dim}; set text.embedding_dim={dim} or use a {embedding_dim}-d file")


def embedding_matrix(path: str | Path, vocabulary: list[str], embedding_dim: int) -> tuple[np.ndarray, int]:
    """[len(vocabulary), embedding_dim] initial weights and the number of vocabulary words found.

    Words absent from the file keep a small uniform random row (the Embedding layer's default range).
    """
    check_dim(path, embedding_dim)
    index = {word: i for i, word in enumerate(vocabulary) if i >= 2}  # not padding or [UNK]
    matrix = np.random.default_rng(SEED).uniform(-0.05, 0.05, (len(vocabulary), embedding_dim)).astype(np.float32)
    hits = 0
    with open(Path(path).expanduser(), encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, 1):
            word, _, rest = line.rstrip("\n").partition(" ")
            row = index.get(word)
            if row is None:
                continue
            values = rest.split(" ")
            if len(values) != embedding_dim:
                raise DataError(f"text.embeddings_file {path} line {number} has {len(values)} values, not "
                                f"{embedding_dim}; the file is damaged")
            matrix[row] = np.asarray(values, dtype=np.float32)
            hits += 1
    return matrix, hits
