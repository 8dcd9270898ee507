"""`launch config`: the resolved config as YAML, each value followed by where it came from.

    task: image  # default
    data:
      batch_size: 128  # override 'data.batch_size=128'
      source: demo  # configs/demo.yaml

The output is itself a config file (--config takes it). TF-free.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from core.config import Config

DERIVED = "set by launch from other keys"  # e.g. runtime.backend multiworker for several nodes


def _flow(value) -> str:
    """One value as YAML flow text, on one line: 0.1, '', null, [64], './runs'."""
    return yaml.safe_dump([value], default_flow_style=True, width=1 << 30).strip()[1:-1]


def source_of(cfg: Config, given: dict[tuple[str, str], str], section: str, key: str, cwd: Path) -> str:
    """Where `section.key` got its value: the file (relative to `cwd` when below it), the
    override or flag, "default", or DERIVED."""
    where = given.get((section, key))
    if where is None:
        default = getattr(type(getattr(cfg, section))(), key)
        return "default" if getattr(getattr(cfg, section), key) == default else DERIVED
    path = Path(where)
    if path.is_absolute() and path.is_relative_to(cwd):
        return str(path.relative_to(cwd))
    return where


def describe(cfg: Config, given: dict[tuple[str, str], str], cwd: Path) -> str:
    """The config as YAML lines `key: value  # source`, sections in the schema's order."""
    task = given.get(("task", ""))
    lines = [f"task: {_flow(cfg.task)}  # {'default' if task is None else task}"]
    for section, values in cfg.to_dict().items():
        if not isinstance(values, dict):
            continue
        lines.append(f"{section}:")
        lines += [f"  {key}: {_flow(value)}  # {source_of(cfg, given, section, key, cwd)}"
                  for key, value in values.items()]
    return "\n".join(lines) + "\n"
