"""docs/configuration.md is the schema as it is: every key, with a meaning written beside its field."""
from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path

from core import config_reference, schema

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "configuration.md"


def _sections() -> dict[str | None, type]:
    hints = typing.get_type_hints(schema.Config)
    return {None: schema.Config, **{f.name: hints[f.name] for f in dataclasses.fields(schema.Config)
                                    if dataclasses.is_dataclass(hints[f.name])}}


def test_the_reference_in_docs_is_up_to_date():
    written, generated = DOC.read_text(), config_reference.render()
    diff = "".join(difflib.unified_diff(written.splitlines(True), generated.splitlines(True),
                                        "docs/configuration.md", "generated", n=1))
    assert written == generated, f"refresh it: {config_reference.COMMAND}\n{diff[:4000]}"


def test_every_key_is_listed_with_its_meaning():
    text = DOC.read_text()
    for name, cls in _sections().items():
        comments = config_reference.field_comments(cls)
        for f in dataclasses.fields(cls):
            if name is None and f.name != "task":
                continue
            key = f"{name}.{f.name}" if name else f.name
            assert comments.get(f.name), f"core/schema.py: {key} has no comment saying what it means"
            assert f"| `{key}` |" in text, key


def test_constraints_and_defaults_read_as_written():
    rows = {line.split(" | ")[0].strip("| `"): line for line in DOC.read_text().splitlines()
            if line.startswith("| `")}
    assert "| `0.08` | > 0, ≤ 1 | *image*: random-resized crop" in rows["data.min_crop_area"]
    assert "`rgb`, `bgr`" in rows["model.channel_order"]
    assert "str \\| None | `null`" in rows["model.weights"]
    assert "Decoupled decay" in rows["optimizer.weight_decay"]  # a comment block above its field
    assert "`mirrored`, `multiworker`, `horovod`" in rows["runtime.backend"]
