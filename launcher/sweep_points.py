"""The points of a sweep: the command line's axes and a config file's sweep: block, made into
points, and each point's config from the base config (see launcher/sweep.py).

TF-free, login-node side.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import config as configs
from core.config import SWEEP_SECTION, Config, ConfigError, load_yaml

FIXED_SECTIONS = ("slurm", "runtime")  # one job array: one request, one layout


@dataclass
class Point:
    """One configuration of the sweep."""

    index: int
    values: dict[str, Any]  # dotted key -> value

    def label(self) -> str:
        return " ".join(f"{key}={show(value)}" for key, value in self.values.items())

    def dir_name(self) -> str:
        """`003-lr0.03-dropout0.5`: the index first, so `ls` lists points in order."""
        words = "-".join(f"{key.rsplit('.', 1)[-1]}{show(value)}" for key, value in self.values.items())
        return f"{self.index:03d}-{re.sub(r'[^A-Za-z0-9.+_-]', '_', words)[:60]}".rstrip("-")


def show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _split(text: str) -> list[str]:
    """`0.01,0.03` -> two values; commas inside [..] or {..} stay (model.head_units=[64,32],[128])."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char in "[{"
        depth -= char in "]}"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current]


def parse_axes(specs: list[str]) -> dict[str, list[Any]]:
    """`--sweep key=v1,v2` strings -> {key: values}; values read as dotted overrides read them."""
    axes: dict[str, list[Any]] = {}
    for spec in specs:
        if "=" not in spec or "." not in spec.split("=", 1)[0]:
            raise ConfigError(f"--sweep {spec!r} must look like section.key=v1,v2,..., e.g. "
                              "--sweep optimizer.lr=0.01,0.03")
        key, raw = spec.split("=", 1)
        values = _split(raw)
        if any(not v.strip() for v in values):
            raise ConfigError(f"--sweep {spec!r} has an empty value; write the values comma-separated, "
                              "e.g. optimizer.lr=0.01,0.03")
        if key in axes:
            raise ConfigError(f"--sweep {key} is given twice; put all its values in one --sweep")
        axes[key] = [configs.parse_override(f"{key}={v}")[2] for v in values]
    return axes


def read_block(path: Path | str) -> dict:
    data = load_yaml(path)
    block = data.get(SWEEP_SECTION) if isinstance(data, dict) else None
    if block is None:
        return {}
    if not isinstance(block, dict) or set(block) - {"grid", "points", "max_parallel"}:
        raise ConfigError(f"sweep in {path}: expected a mapping with grid, points and/or max_parallel, "
                          f"got {block!r}")
    return block


def make_points(block: dict, axes: dict[str, list[Any]], where: str) -> list[Point]:
    """The points of the file's sweep block and the command line's axes, in order."""
    grid = block.get("grid") or {}
    listed = block.get("points") or []
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError(f"sweep.grid in {where}: expected {{section.key: [values, ...]}}, got {grid!r}")
    if not isinstance(listed, list) or not all(isinstance(p, dict) and p for p in listed):
        raise ConfigError(f"sweep.points in {where}: expected a list of {{section.key: value}} mappings")
    if listed and (grid or axes):
        raise ConfigError(f"sweep in {where} lists points, which cannot be combined with a grid or "
                          "--sweep; use one of them")
    if listed:
        return [Point(i, dict(p)) for i, p in enumerate(listed)]
    grid = {**grid, **axes}
    keys = list(grid)
    return [Point(i, dict(zip(keys, combo))) for i, combo in enumerate(itertools.product(*grid.values()))]


class PointConfigs:
    """Each point's config from the base: a value is checked once per distinct (key, value), as
    the dotted override would be, and a point copies only its sections (shallow), so a
    1,000-point grid costs about what its 65 distinct values do."""

    def __init__(self, base: Config):
        self.base = base
        self.scratch = copy.deepcopy(base)  # where each value is checked on its own
        self.checked: dict[tuple[str, str], Any] = {}

    def value(self, dotted: str, value: Any) -> Any:
        memo = (dotted, repr(value))
        if memo not in self.checked:
            if "." not in dotted:
                raise ConfigError(f"sweep key {dotted!r} must look like section.key, e.g. optimizer.lr")
            section, key = dotted.split(".", 1)
            if section in FIXED_SECTIONS:
                raise ConfigError(f"{dotted} cannot be swept: a job array has one resource request and one "
                                  f"layout, so {section}.* is the same for every point; launch those separately")
            configs._set(self.scratch, section, key, value, "the sweep")
            self.checked[memo] = getattr(getattr(self.scratch, section), key)
        return self.checked[memo]

    def of(self, point: Point) -> Config:
        cfg = copy.copy(self.base)
        for section in {f.name for f in dataclasses.fields(Config)}:
            setattr(cfg, section, copy.copy(getattr(self.base, section)))
        for dotted, value in point.values.items():
            checked = self.value(dotted, value)
            section, key = dotted.split(".", 1)
            setattr(getattr(cfg, section), key, checked)
        configs.check(cfg)
        return cfg
