"""What `launch` checks of a text run before it creates or submits anything (TF-free, cheap):
the CSV/JSONL file and its columns, and the pretrained vectors file and its dimension. The job
checks the same things again at its start with the same wording (training/data/text_sources.py,
training/embeddings.py)."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from core import storage
from core.config import Config, ConfigError

HEAD_BYTES = 1 << 16  # enough for a header row or a first JSON line


def _head(path: Path) -> str:
    with open(path, "rb") as fh:
        data = fh.read(HEAD_BYTES)
    return data.decode("utf-8-sig", "replace")


def check_text(cfg: Config) -> None:
    """Raises ConfigError (one line) for a text source or embeddings file the job could not use."""
    data, text = cfg.data, cfg.text
    if data.source in ("csv", "jsonl") and "://" not in data.data_dir:
        path = Path(data.data_dir).expanduser()
        if not path.is_file():
            raise ConfigError(f"data.data_dir {path} is not a file; data.source {data.source} needs the "
                              f"{data.source.upper()} file itself")
        head = _head(path)
        if data.source == "csv":
            columns = next(csv.reader(io.StringIO(head, newline="")), [])
        else:
            first = next((line for line in head.splitlines() if line.strip()), "{}")
            try:
                record = json.loads(first)
            except ValueError:
                raise ConfigError(f"{path}: the first line is not a JSON object; data.source jsonl needs one "
                                  "object per line") from None
            columns = list(record) if isinstance(record, dict) else []
        for key, name in ((data.text_column, "data.text_column"), (data.label_column, "data.label_column")):
            if key not in columns:
                raise ConfigError(f"{path} has no column {key!r} (its columns: {', '.join(columns) or 'none'}); "
                                  f"set {name}")
    if data.source == "folder" and "://" not in data.data_dir:
        train = Path(data.data_dir).expanduser() / data.train_split
        if not train.is_dir():
            raise ConfigError(f"{train} is not a folder; data.source folder needs {train}/<class>/*.txt "
                              "(set data.data_dir / data.train_split)")
    if text.embeddings_file.startswith("s3://"):
        path = text.embeddings_file  # its first line, by one ranged read
        head = storage.read_head(path, HEAD_BYTES, cfg.storage.endpoint_url).decode("utf-8-sig", "replace")
    elif text.embeddings_file:
        path = Path(text.embeddings_file).expanduser()
        if not path.is_file():
            raise ConfigError(f"text.embeddings_file {path} does not exist; give a GloVe-format file or \"\"")
        head = _head(path)
    if text.embeddings_file:
        dim = len(head.split("\n", 1)[0].rstrip().split(" ")) - 1
        if dim != text.embedding_dim:
            raise ConfigError(f"text.embeddings_file {path} holds {dim}-dimensional vectors but text.embedding_dim "
                              f"is {text.embedding_dim}; set text.embedding_dim={dim} or use a "
                              f"{text.embedding_dim}-d file")
