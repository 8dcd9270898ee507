"""Loading the run configuration: defaults -> YAML file -> dotted overrides -> explicit flags,
each value checked against the schema (core/schema.py) and each error naming where it came from.

Imported on login nodes and must stay free of TensorFlow.
"""
from __future__ import annotations

import dataclasses
import functools
import re
import sys
import types
import typing
from pathlib import Path
from typing import Annotated, Any

import yaml

from core import registry, rundir, storage
from core.errors import ConfigError, closest, did_you_mean

# The schema's names are part of this module's API: callers import Config and its sections from here.
from core.schema import (  # noqa: F401
    BACKENDS,
    CLUSTERS,
    GPU_STYLES,
    PRECISIONS,
    SWEEP_SECTION,
    AugmentConfig,
    Choice,
    Config,
    DataConfig,
    ModelConfig,
    OptimizerConfig,
    Range,
    RuntimeConfig,
    ScheduleConfig,
    SlurmConfig,
    StorageConfig,
    TextConfig,
    TrainConfig,
)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Checks `value` against the annotated type `tp`; ints are accepted where floats are."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, where) for v in value]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # e.g. mem: 64 or gpu_type: 100 written without quotes
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    return value


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _reject_control_characters(value: Any, where: str) -> None:
    """Strings end up in the sbatch script and its #SBATCH lines, where a newline starts a new
    directive or command; no legitimate value needs one, so refuse them all at load time."""
    for text in value if isinstance(value, list) else [value]:
        if isinstance(text, str) and (bad := _CONTROL.search(text)):
            raise ConfigError(f"{where}: contains the control character {bad.group()!r}; "
                              "write the value on one line without tabs or newlines")


def _set_task(cfg: Config, value: Any, source: str, given: dict | None = None) -> None:
    if value not in registry.TASKS:
        raise ConfigError(f"task in {source}: {value!r} is not one of {', '.join(registry.TASKS)}"
                          f"{did_you_mean(value, registry.TASKS)}")
    cfg.task = value
    if given is not None:
        given[("task", "")] = source


@functools.cache
def _hints(section_type: type, extras: bool = False) -> dict[str, Any]:
    """A schema section's field types (with their Range and Choice declarations when `extras`):
    evaluated once per process, since the schema's annotations are strings
    (`from __future__ import annotations`) and a config sets hundreds of keys."""
    return typing.get_type_hints(section_type, include_extras=extras)


def _set(cfg: Config, section: str, key: str, value: Any, source: str, given: dict | None = None) -> None:
    sections = {f.name: f for f in dataclasses.fields(Config) if f.name != "task"}
    if section not in sections:
        raise ConfigError(f"unknown section '{section}' in {source}; valid sections: "
                          f"{', '.join(sections)}{did_you_mean(section, sections)}")
    sec = getattr(cfg, section)
    hints = _hints(type(sec))
    if key not in hints:
        raise ConfigError(f"unknown key '{section}.{key}' in {source}; valid keys of '{section}': "
                          f"{', '.join(hints)}{_closest_key(section, key)}")
    where = f"{section}.{key} in {source}"
    value = _coerce(value, hints[key], where)
    _reject_control_characters(value, where)
    for choice in _declared(type(sec), key, Choice):
        if value not in choice.values:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(choice.values)}"
                              f"{did_you_mean(value, choice.values)}")
    for bound in _declared(type(sec), key, Range):
        for item in value if isinstance(value, list) else [value]:
            if (problem := bound.problem(item)) is not None:
                raise ConfigError(f"{where}: {item!r} {problem}")
    setattr(sec, key, value)
    if given is not None:
        given[(section, key)] = source


def _dotted_keys() -> list[str]:
    """Every `section.key` of the schema."""
    return [f"{f.name}.{key}" for f in dataclasses.fields(Config) if f.name != "task"
            for key in _hints(f.default_factory)]


def _closest_key(section: str, key: str) -> str:
    """The hint for an unknown key: a close key of its section, else the same or a close key
    elsewhere (train.batch_size -> data.batch_size)."""
    own = [dotted.split(".", 1)[1] for dotted in _dotted_keys() if dotted.startswith(f"{section}.")]
    if found := closest(key, own):
        return f"; did you mean '{section}.{found}'?"
    elsewhere = [dotted for dotted in _dotted_keys() if dotted.endswith(f".{key}")]
    return f"; did you mean '{elsewhere[0]}'?" if elsewhere else ""


def _declared(section_type: type, key: str, kind: type) -> list:
    """The Range bounds or Choice lists declared on a field's annotation."""
    hint = _hints(section_type, True)[key]
    if typing.get_origin(hint) is not Annotated:
        return []
    return [meta for meta in typing.get_args(hint)[1:] if isinstance(meta, kind)]


def _apply_mapping(cfg: Config, data: Any, source: str, given: dict | None = None) -> None:
    if data is None:
        return
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    if "task" in data:  # the one top-level key that is not a section
        _set_task(cfg, data["task"], source, given)
    for section, values in data.items():
        if values is None or section in ("task", SWEEP_SECTION):
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"section '{section}' in {source}: expected a mapping of keys")
        for key, value in values.items():
            _set(cfg, str(section), str(key), value, source, given)


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_WORDS = {"true": True, "false": False, "null": None, "~": None}


def parse_override(text: str) -> tuple[str, str, Any]:
    """Splits `section.key=value`. The value is the text as typed, except a number, true/false,
    null, or a list/mapping in YAML flow style ([8, 4], {a: 1}); a text field keeps even a number
    as typed (slurm.account=007 stays "007"). YAML is not applied to the rest: it would cut
    `proj #7` to `proj` and fold a newline without a word.
    """
    if text.split("=", 1)[0] == "task":
        return "", "task", text.split("=", 1)[1].strip()
    if "=" not in text or "." not in text.split("=", 1)[0]:
        name, _, value = text.partition("=")
        key = closest(name, {dotted.split(".", 1)[1] for dotted in _dotted_keys()}) if "=" in text else None
        owners = [dotted for dotted in _dotted_keys() if dotted.endswith(f".{key}")]
        fix = f"; did you mean '{owners[0]}={value}'?" if len(owners) == 1 else ""  # not name=: 3 sections have one
        raise ConfigError(f"override '{text}' must look like section.key=value, e.g. optimizer.lr=0.05{fix}")
    dotted, raw = text.split("=", 1)
    section, key = dotted.split(".", 1)
    word = raw.strip(" ")
    if word[:1] in ("[", "{"):
        return section, key, _flow_value(word, text)
    if word.lower() in _WORDS:
        return section, key, _WORDS[word.lower()]
    if _NUMBER.fullmatch(word) and not _is_text_field(section, key):
        return section, key, float(word) if re.search(r"[.eE]", word) else int(word)
    return section, key, raw


def _is_text_field(section: str, key: str) -> bool:
    sec = {f.name: f for f in dataclasses.fields(Config)}.get(section)
    hint = _hints(sec.default_factory).get(key) if sec else None
    return hint is str or hint == (str | None)


def _flow_value(word: str, text: str) -> Any:
    """A YAML flow list or mapping; refused when YAML would drop part of it (a # comment)."""
    try:
        tokens = list(yaml.scan(word))
        value = yaml.safe_load(word)
    except yaml.YAMLError as err:
        raise ConfigError(f"override '{text}': not a valid list or mapping ({getattr(err, 'problem', err)}); "
                          "write it like [8, 4] or {a: 1}") from None
    kept = bytearray(len(word))
    for token in tokens:
        kept[token.start_mark.index:token.end_mark.index] = b"\1" * (token.end_mark.index - token.start_mark.index)
    dropped = "".join(c for c, k in zip(word, kept) if not k).split()
    if dropped:
        raise ConfigError(f"override '{text}': YAML would drop {' '.join(dropped)!r} from the value "
                          "(# starts a comment); quote that item, e.g. ['a #1']")
    return value


def config_stem(path: str | Path) -> str:
    """The run name a config file gives: its file name without .yaml, for paths and s3:// URLs."""
    return Path(str(path).rsplit("/", 1)[-1]).stem


def load_yaml(path: str | Path) -> Any:
    if str(path).startswith("s3://"):
        text = storage.read_text(str(path))
    else:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; pass an existing file to --config (see configs/)")
        text = path.read_text()
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: not valid YAML ({getattr(err, 'problem', err)})") from None


def load_config(path: str | Path | None = None, overrides: list[str] = (),
                flags: dict[str, Any] | None = None, notes: list[str] | None = None) -> Config:
    """Builds the resolved config. Later layers win: defaults, file, overrides, flags.

    Args:
        path: YAML file with one mapping per section, or None for defaults only.
        overrides: dotted `section.key=value` strings from the command line.
        flags: `{"section.key": value}` from explicit command-line flags; None values are skipped.
        notes: where given, what was chosen for the user (one line each) is added here for the
            caller to print once the launch is accepted; else it is printed at once.
    """
    return resolve(path, overrides, flags, notes)[0]


def resolve(path: str | Path | None = None, overrides: list[str] = (), flags: dict[str, Any] | None = None,
            notes: list[str] | None = None) -> tuple[Config, dict[tuple[str, str], str]]:
    """load_config's config, and where each key was set last: (section, key) -> the file's path,
    "override 'a.b=1'" or "flag --b"; ("task", "") for the task. Keys absent were left at
    their defaults, or chosen by launch (resolve_backend, a task's default model)."""
    cfg = Config()
    given: dict[tuple[str, str], str] = {}
    data = load_yaml(path) if path is not None else None
    _apply_mapping(cfg, data, str(path), given)
    for text in overrides:
        section, key, value = parse_override(text)
        if not section:
            _set_task(cfg, value, f"override '{text}'", given)
            continue
        _set(cfg, section, key, value, f"override '{text}'", given)
    for dotted, value in (flags or {}).items():
        if value is not None:
            section, key = dotted.split(".", 1)
            flag = "--" + key.replace("_", "-")
            _set(cfg, section, key, value, f"flag {flag}", given)
    check_task_keys(cfg, given)
    note = resolve_backend(cfg, ("runtime", "backend") in given)
    check(cfg)
    if note and notes is not None:
        notes.append(note)
    elif note:  # after the checks: a refused config is one line
        print(f"launch: note: {note}", file=sys.stderr)
    return cfg, given


def resolve_backend(cfg: Config, backend_given: bool) -> str | None:
    """Fits the default backend to the request: mirrored drives one node, so a request for several
    nodes that names no backend (YAML, override or --backend) gets multiworker.

    Returns:
        One line saying what was chosen and why, or None when nothing changed.
    """
    if backend_given or cfg.slurm.nodes == 1:
        return None
    cfg.runtime.backend = "multiworker"
    return (f"runtime.backend multiworker, as slurm.nodes is {cfg.slurm.nodes} and the default "
            "mirrored drives one node; pass --backend horovod for Horovod")


def check_task_keys(cfg: Config, given: dict[tuple[str, str], str]) -> None:
    """Refuses keys of another task set away from their defaults (they would be ignored without a
    word; a resolved config.yaml holds every key at its default) and gives the task its default
    model when the config names none."""
    for (section, key), source in given.items():
        if section == "task":
            continue
        owner = registry.owner_of(section, key)
        sec = getattr(cfg, section)
        if owner is not None and owner != cfg.task and getattr(sec, key) != getattr(type(sec)(), key):
            raise ConfigError(f"{source}: {section}.{key} is a key of task {owner}, but "
                              f"the task is {cfg.task}; remove it or set task: {owner}")
    if ("model", "name") not in given:
        cfg.model.name = registry.TASKS[cfg.task].default_model


def check(cfg: Config) -> None:
    """Cross-field rules that no single key can enforce."""
    entry = registry.TASKS[cfg.task]
    if cfg.model.name not in entry.models:
        raise ConfigError(f"model.name {cfg.model.name!r} is not a {cfg.task} model; valid names: "
                          f"{', '.join(entry.models)} (core/registry.py)"
                          f"{did_you_mean(cfg.model.name, entry.models)}")
    if cfg.data.source not in entry.sources:
        raise ConfigError(f"data.source {cfg.data.source!r} is not a {cfg.task} source; valid sources: "
                          f"{', '.join(entry.sources)}{did_you_mean(cfg.data.source, entry.sources)}")
    if cfg.runtime.backend == "mirrored" and cfg.slurm.nodes > 1:
        raise ConfigError(
            f"runtime.backend mirrored runs on one node but slurm.nodes is {cfg.slurm.nodes}; "
            "use --backend multiworker or horovod for several nodes (or leave runtime.backend unset "
            "and launch picks multiworker)")
    if cfg.runtime.backend == "horovod" and cfg.train.jit_compile:
        raise ConfigError("train.jit_compile needs Horovod ops compiled for XLA, which the project's "
                          "Horovod build leaves out; set train.jit_compile=false or use --backend mirrored")
    if cfg.slurm.gpu_type and cfg.slurm.gpus_per_node == 0:
        raise ConfigError(f"--gpu-type {cfg.slurm.gpu_type} needs --gpus N (GPUs per node) above 0")
    if cfg.data.source in ("tfrecord", "folder", "csv", "jsonl") and not cfg.data.data_dir:
        raise ConfigError(f"data.source {cfg.data.source} needs data.data_dir; set it in the config or "
                          "as data.data_dir=/path")
    if cfg.storage.mirror and not cfg.storage.mirror.startswith("s3://"):
        raise ConfigError(f"storage.mirror {cfg.storage.mirror!r} is not an s3:// URL; set it to "
                          "s3://bucket/prefix (the run directory itself is on runtime.run_root)")
    if cfg.data.data_dir.startswith("s3://") and cfg.data.source != "tfrecord":
        raise ConfigError(f"data.data_dir {cfg.data.data_dir} is in object storage, which holds TFRecord "
                          "shards only; convert the data (python -m training.data.convert) and set "
                          "data.source=tfrecord")
    if len(cfg.model.mean) != 3 or len(cfg.model.std) != 3:
        raise ConfigError("model.mean and model.std need three values, one per channel")
    replicas, how = replica_count(cfg)
    if cfg.data.batch_size % replicas:
        fit = -(-cfg.data.batch_size // replicas) * replicas
        raise ConfigError(f"data.batch_size {cfg.data.batch_size} (the global batch) does not divide over "
                          f"{replicas} replicas ({how}); use data.batch_size={fit} or another multiple "
                          f"of {replicas}")


def replica_count(cfg: Config) -> tuple[int, str]:
    """The replicas the trainer will run (training/backends: num_replicas), and how they come
    about, without TensorFlow: one per GPU of every node used; without GPUs one per process,
    except that mirrored splits its one process's CPU into runtime.cpu_devices devices."""
    slurm, backend = cfg.slurm, cfg.runtime.backend
    nodes = 1 if backend == "mirrored" else slurm.nodes
    if slurm.gpus_per_node:
        return nodes * slurm.gpus_per_node, f"{nodes} node(s) x {slurm.gpus_per_node} GPU(s)"
    if backend == "mirrored":
        devices = max(cfg.runtime.cpu_devices, 1)
        return devices, f"{devices} CPU device(s) of one process, runtime.cpu_devices"
    return nodes, f"{nodes} node(s) x 1 CPU process, no GPUs"


def load_run_config(run_dir: str | Path) -> Config:
    """A run's resolved config.yaml, as launch wrote it: the one reader of that file.

    Raises:
        ConfigError: the folder is not a run directory, or its config.yaml is damaged.
    """
    path = Path(run_dir) / rundir.CONFIG
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no {rundir.CONFIG}); create runs with launch")
    return from_dict(load_yaml(path) or {}, str(path))


def from_dict(data: dict[str, Any], source: str = "resolved config") -> Config:
    """Rebuilds a Config from `Config.to_dict()` output (e.g. a run's config.yaml)."""
    cfg = Config()
    _apply_mapping(cfg, data, source)
    return cfg


def dump(cfg: Config) -> str:
    # libyaml's dumper when PyYAML has it: the same text, about 10x faster (a 1,000-point sweep).
    return yaml.dump(cfg.to_dict(), Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False)
