"""docs/configuration.md, generated from the schema: every key of every section with its type,
default, allowed values and the comment written beside its field in core/schema.py.

    python -m core.config_reference > docs/configuration.md

tests/test_config_reference.py fails when the file in docs/ differs from what this prints.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import json
import sys
import tokenize
import types
import typing
from typing import Any

from core import registry, schema

COMMAND = "python -m core.config_reference > docs/configuration.md"

INTRO = f"""\
<!-- Generated from core/schema.py by `{COMMAND}`; edit the schema, not this file. -->
# Configuration reference

A run's configuration comes in layers, later wins: the defaults below, the YAML file given to
`--config`, dotted `section.key=value` overrides on the command line, then explicit flags
(`--nodes` is `slurm.nodes`, `--gpus` is `slurm.gpus_per_node`, ...; `launch --help` lists them).
Unknown keys, wrong types and values outside the allowed range are one-line errors that name
the key and where the value came from. A dotted override keeps the text you typed unless it is
a number, `true`/`false`, `null` or a `[..]`/`{{..}}` literal (`slurm.account='proj #7'` stays
`proj #7`). A config file may also hold a `sweep:` block ([sweeps.md](sweeps.md)), which is not
a run setting.

Keys marked *image* or *text* belong to that task alone (`task:`); setting another task's key
is an error rather than silently ignored. Names of models, optimizers, schedules and backends
come from `core/registry.py`.
"""


def field_comments(cls: type) -> dict[str, str]:
    """{field name: its comment}: the comment at the end of the field's line(s), else the
    comment lines right above it, joined."""
    source = inspect.getsource(sys.modules[cls.__module__])
    comments, whole_line = {}, set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
            if tok.line.lstrip().startswith("#"):
                whole_line.add(tok.start[0])
    node = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    found = {}
    for statement in node.body:
        if not (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)):
            continue
        trailing = [comments[line] for line in range(statement.lineno, statement.end_lineno + 1)
                    if line in comments and line not in whole_line]
        above, line = [], statement.lineno - 1
        while line in whole_line:
            above.insert(0, comments[line])
            line -= 1
        found[statement.target.id] = " ".join(trailing or above)
    return found


def type_name(hint: Any) -> str:
    """`int`, `list[float]`, `str | None`: the type as the schema spells it, constraints left out."""
    if typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return " | ".join("None" if a is type(None) else type_name(a) for a in typing.get_args(hint))
    return str(hint)


def allowed(hint: Any) -> str:
    """The field's Range or Choice in words: `≥ 0`, `> 0, ≤ 1`, `rgb, bgr`."""
    parts = []
    for constraint in typing.get_args(hint)[1:] if typing.get_origin(hint) is typing.Annotated else ():
        if isinstance(constraint, schema.Choice):
            parts.append(", ".join(f"`{value}`" for value in constraint.values))
        elif isinstance(constraint, schema.Range):
            bounds = (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤"))
            parts.append(", ".join(f"{sign} {_number(getattr(constraint, key))}" for key, sign in bounds
                                   if getattr(constraint, key) is not None))
    return "; ".join(parts)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def default(f: dataclasses.Field) -> str:
    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return f"`{json.dumps(value)}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def section_table(name: str | None, cls: type) -> list[str]:
    """The markdown table of one section (name None: the top-level keys)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    comments = field_comments(cls)
    rows = ["| key | type | default | allowed | meaning |", "| --- | --- | --- | --- | --- |"]
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            continue  # a section: its own table
        key = f"{name}.{f.name}" if name else f.name
        owner = registry.owner_of(name, f.name) if name else None
        meaning = f"*{owner}*: {comments[f.name]}" if owner else comments[f.name]
        cells = [f"`{key}`", type_name(hints[f.name]), default(f), allowed(hints[f.name]), meaning]
        rows.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return rows


def render() -> str:
    """The whole of docs/configuration.md."""
    out = [INTRO, "## Top level", "", *section_table(None, schema.Config), ""]
    hints = typing.get_type_hints(schema.Config)
    for f in dataclasses.fields(schema.Config):
        cls = hints[f.name]
        if not dataclasses.is_dataclass(cls):
            continue
        doc = " ".join(inspect.cleandoc(cls.__doc__ or "").split())
        out += [f"## {f.name}", "", doc, "", *section_table(f.name, cls), ""]
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(render())
