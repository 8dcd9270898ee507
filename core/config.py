"""Typed run configuration: defaults -> YAML file -> dotted overrides -> explicit flags.

One dataclass per section; each component receives only its own section. This module is
imported on login nodes and must stay free of TensorFlow.
"""
from __future__ import annotations

import dataclasses
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import yaml

from core import registry
from core.errors import UserError


class ConfigError(UserError, ValueError):
    """A user-facing configuration problem; its message is one line: what, where, what to do."""


BACKENDS = registry.BACKENDS
GPU_STYLES = ("gres", "gpus-per-node", "constraint")
PRECISIONS = ("float32", "bfloat16", "float16")
CLUSTERS = ("auto", "slurm", "local")
SWEEP_SECTION = "sweep"  # a config file's sweep: block, read by launcher/sweep.py, not a run setting


@dataclass(frozen=True)
class Range:
    """Allowed values of a numeric field, declared with it: `Annotated[float, Range(gt=0)]`.

    A list field's bound applies to each item. None leaves that side open.
    """

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def problem(self, value: float) -> str | None:
        """Why `value` is out of range, or None."""
        if self.ge is not None and value < self.ge:
            return f"is below the minimum {self.ge}"
        if self.gt is not None and value <= self.gt:
            return f"must be above {self.gt}"
        if self.le is not None and value > self.le:
            return f"is above the maximum {self.le}"
        if self.lt is not None and value >= self.lt:
            return f"must be below {self.lt}"
        return None


@dataclass(frozen=True)
class Choice:
    """The allowed values of a text field, declared with it: `Annotated[str, Choice(NAMES)]`."""

    values: tuple[str, ...]


COUNT = Range(ge=1)  # counts of things: at least one
NON_NEGATIVE = Range(ge=0)
FRACTION = Range(gt=0, le=1)  # a part of the whole, (0, 1]
PROBABILITY = Range(ge=0, lt=1)  # dropout, smoothing, momentum: [0, 1)


@dataclass
class DataConfig:
    """Where the examples come from and how they are batched."""

    source: str = "demo"  # image: demo | tfrecord | folder | synthetic; text: demo | tfrecord | folder | csv | jsonl
    data_dir: str = ""  # TFRecord shard folder, class-folder root with train/ and val/, or the CSV/JSONL file
    train_split: str = "train"  # shard prefix (tfrecord) or sub-folder (folder) of training data
    val_split: str = "validation"  # shard prefix or sub-folder of validation data
    label_offset: Annotated[int, NON_NEGATIVE] = 0  # subtracted from stored labels; 1 for the standard ImageNet shards
    num_classes: Annotated[int, NON_NEGATIVE] = 0  # 0 = read from labels.json next to the shards
    image_size: Annotated[int, Range(ge=8)] = 224  # square model input side, pixels
    batch_size: Annotated[int, COUNT] = 256  # global batch, summed over all replicas
    shuffle_buffer: Annotated[int, COUNT] = 10000  # examples
    min_crop_area: Annotated[float, FRACTION] = 0.08  # random-resized crop: smallest fraction of the image kept
    val_crop_fraction: Annotated[float, FRACTION] = 0.875  # centre crop kept before resizing, eval only
    synthetic_examples: Annotated[int, COUNT] = 12800  # examples per epoch in synthetic mode
    synthetic_classes: Annotated[int, COUNT] = 1000
    text_column: str = "text"  # text task, csv/jsonl: the column (key) holding the text
    label_column: str = "label"  # text task, csv/jsonl: the column (key) holding the class name
    val_fraction: Annotated[float, Range(gt=0, lt=1)] = 0.1  # text task: held out when the source has no val split
    classes: list[str] = field(default_factory=list)  # text task: keep only these labels; [] = every label seen


@dataclass
class AugmentConfig:
    """Augmentation layers inside the model (run on the accelerator, training only). 0 disables."""

    flip: bool = True  # random horizontal flip
    rotation: Annotated[float, NON_NEGATIVE] = 0.0  # max rotation, fraction of a full turn
    zoom: Annotated[float, NON_NEGATIVE] = 0.0  # max zoom in/out, fraction of the side
    translation: Annotated[float, NON_NEGATIVE] = 0.0  # max shift, fraction of the side
    brightness: Annotated[float, NON_NEGATIVE] = 0.0  # max brightness change, fraction of the value range
    contrast: Annotated[float, NON_NEGATIVE] = 0.0  # max contrast factor change
    saturation: Annotated[float, NON_NEGATIVE] = 0.0  # max colour saturation change, fraction


@dataclass
class ModelConfig:
    """Architecture, pretrained weights, head and input preprocessing."""

    name: str = "vgg19"  # core/registry.py names per task; text defaults to lstm
    weights: str | None = None  # "imagenet", a path to an .h5 file, or null for random init
    head_units: Annotated[list[int], COUNT] = field(default_factory=lambda: [1024])  # dense layers before the classifier
    dropout: Annotated[float, PROBABILITY] = 0.5  # dropout before each head layer
    trainable_layers: Annotated[int, Range(ge=-1)] = -1  # -1 trains every layer; N trains only the top N base layers
    channel_order: Annotated[str, Choice(("rgb", "bgr"))] = "bgr"  # order the base network expects
    mean: list[float] = field(default_factory=lambda: [103.939, 116.779, 123.68])  # per channel, 0..255 scale
    std: Annotated[list[float], Range(gt=0)] = field(default_factory=lambda: [1.0, 1.0, 1.0])  # per channel divisor after mean


@dataclass
class OptimizerConfig:
    """Optimizer and the base learning rate."""

    name: Annotated[str, Choice(registry.OPTIMIZERS)] = "sgd"
    lr: Annotated[float, Range(gt=0)] = 0.1  # peak learning rate at base_batch_size
    momentum: Annotated[float, PROBABILITY] = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    # Decoupled decay (the tf-keras optimizer's own weight_decay, all three optimizers): each step
    # every trainable weight, biases and BN scales included, shrinks by lr * weight_decay * w,
    # apart from the gradient and momentum; not an L2 term in the loss. 0 = none; e.g. 1e-4 for sgd.
    weight_decay: Annotated[float, NON_NEGATIVE] = 0.0
    scale_lr: bool = True  # linear scaling: lr * global_batch / base_batch_size
    base_batch_size: Annotated[int, COUNT] = 256  # batch the lr was tuned for
    label_smoothing: Annotated[float, PROBABILITY] = 0.0
    clipnorm: Annotated[float, NON_NEGATIVE] = 0.0  # clip each gradient to this L2 norm (RNNs need it); 0 = off


@dataclass
class ScheduleConfig:
    """Learning-rate schedule over steps; epochs here are converted to steps once at start-up."""

    name: Annotated[str, Choice(registry.SCHEDULES)] = "cosine"  # shapes: training/optim.py WarmupDecay
    warmup_epochs: Annotated[float, NON_NEGATIVE] = 0.0  # linear warmup from 0 to the peak lr
    min_lr_fraction: Annotated[float, Range(ge=0, le=1)] = 0.0  # floor of the schedule, fraction of the peak lr
    decay_rate: Annotated[float, FRACTION] = 0.5  # smooth_decay: factor per decay_epochs; cyclic_decay: factor per cycle
    decay_epochs: Annotated[float, Range(gt=0)] = 10.0  # smooth_decay period
    cycle_epochs: Annotated[float, Range(gt=0)] = 4.0  # cyclic_decay: length of one triangular cycle
    step_epochs: Annotated[list[float], NON_NEGATIVE] = field(default_factory=lambda: [30.0, 60.0, 80.0])  # step: boundaries
    step_factor: Annotated[float, Range(gt=0)] = 0.1  # step: multiplier applied at each boundary


@dataclass
class TextConfig:
    """Text task: tokenizer (a Keras TextVectorization adapted on the training split) and text model."""

    max_tokens: Annotated[int, Range(ge=3)] = 20000  # vocabulary size, padding and out-of-vocabulary included
    sequence_length: Annotated[int, COUNT] = 200  # tokens per text, cut or padded (with 0, the pad index)
    standardize: Annotated[str, Choice(("lower_and_strip_punctuation", "lower", "strip_punctuation", "none"))] = \
        "lower_and_strip_punctuation"
    split: Annotated[str, Choice(("whitespace", "character"))] = "whitespace"
    embedding_dim: Annotated[int, COUNT] = 128
    hidden_dim: Annotated[int, COUNT] = 128  # units of each recurrent layer (per direction); dense units for bag_of_embeddings
    number_of_layers: Annotated[int, COUNT] = 1  # stacked recurrent layers
    bidirectional: bool = False
    embeddings_file: str = ""  # GloVe text format (word v1 ... vd), d = embedding_dim; "" = random init
    embeddings_trainable: bool = True  # false freezes the embedding (pretrained vectors kept as they are)


@dataclass
class TrainConfig:
    """Loop length, numerics, checkpoint and logging cadence."""

    epochs: Annotated[int, COUNT] = 90
    steps_per_epoch: Annotated[int, NON_NEGATIVE] = 0  # 0 = examples / global batch
    validation_steps: Annotated[int, NON_NEGATIVE] = 0  # 0 = the whole validation split
    seed: int = 42  # each worker uses seed + rank
    precision: Annotated[str, Choice(PRECISIONS)] = "float32"  # bfloat16 / float16: mixed precision
    jit_compile: bool = False  # XLA
    log_every_steps: Annotated[int, COUNT] = 50  # TensorBoard scalar cadence, steps
    # Steps per compiled call (Keras compile's steps_per_execution): fewer Python round trips for
    # small models. Stops and step checkpoints then land on multiples of it.
    steps_per_execution: Annotated[int, COUNT] = 1
    checkpoint_every_steps: Annotated[int, NON_NEGATIVE] = 0  # 0 = end of each epoch only
    checkpoint_every_minutes: Annotated[float, NON_NEGATIVE] = 0.0  # wall clock, mid-epoch too; 0 = off
    target_accuracy: Annotated[float, Range(ge=0, le=1)] = 0.0  # reported in the summary; 0 = none


@dataclass
class RuntimeConfig:
    """Where and how the job runs."""

    backend: Annotated[str, Choice(registry.BACKENDS)] = "mirrored"
    cluster: Annotated[str, Choice(CLUSTERS)] = "auto"  # auto: slurm when sbatch is on PATH
    run_root: str = "./runs"  # shared folder that holds one sub-folder per run
    run_name: str = ""  # "" = <config name>-<timestamp>
    python: str = ""  # interpreter on the compute nodes; "" = the one running launch
    port: Annotated[int, Range(ge=1, le=65535)] = 29500  # first worker port; rank r listens on port + r
    cpu_devices: Annotated[int, NON_NEGATIVE] = 0  # split the CPU into N logical devices when no GPU is present (tests)
    worker_timeout_s: Annotated[int, COUNT] = 120  # a lost worker ends the job within this many seconds
    allow_cpu: bool = False  # train even when the job got GPUs that TensorFlow cannot see


@dataclass
class SlurmConfig:
    """sbatch request. Site differences (GPU style, partition) belong here, not in templates."""

    nodes: Annotated[int, COUNT] = 1
    gpus_per_node: Annotated[int, NON_NEGATIVE] = 0
    gpu_type: str = ""  # e.g. a100; "" = any
    gpu_style: Annotated[str, Choice(GPU_STYLES)] = "gres"
    cpus_per_task: Annotated[int, COUNT] = 8
    mem: str = ""  # per node, sbatch syntax (e.g. 64G); "" = site default
    time_min: Annotated[int, COUNT] = 60  # wall-clock limit, minutes
    signal_lead_s: Annotated[int, NON_NEGATIVE] = 300  # SIGUSR1 this many seconds before the limit: checkpoint and requeue
    max_requeues: Annotated[int, NON_NEGATIVE] = 3
    partition: str = ""
    account: str = ""
    qos: str = ""
    constraint: str = ""  # extra node features, ANDed with the GPU type in constraint style
    job_name: str = ""  # "" = run name
    exclusive: bool = False
    setup: list[str] = field(default_factory=list)  # shell lines run before training (module load ...)
    # Site escape hatches (launcher/render.py checks and quotes them):
    extra: list[str] = field(default_factory=list)  # raw sbatch options, each --key or --key=value (--reservation=ml)
    exports: list[str] = field(default_factory=list)  # env var names the job gets from launch's shell (--export=ALL,NAME); values never written


@dataclass
class StorageConfig:
    """Object storage (core/storage.py). Credentials are never config: they come from the AWS
    environment or profile chain only."""

    mirror: str = ""  # s3://bucket/prefix: the run directory is uploaded there after each checkpoint
    scratch: str = ""  # node-local folder for s3:// data; "" = $SLURM_TMPDIR, $TMPDIR or /tmp
    endpoint_url: str = ""  # non-AWS stores (MinIO, Ceph RGW); "" = $AWS_ENDPOINT_URL or AWS


@dataclass
class Config:
    task: str = "image"  # core/registry.py TASKS: image | text
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    text: TextConfig = field(default_factory=TextConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)




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


def _set_task(cfg: Config, value: Any, source: str) -> None:
    if value not in registry.TASKS:
        raise ConfigError(f"task in {source}: {value!r} is not one of {', '.join(registry.TASKS)}")
    cfg.task = value


def _set(cfg: Config, section: str, key: str, value: Any, source: str, given: set | None = None) -> None:
    sections = {f.name: f for f in dataclasses.fields(Config) if f.name != "task"}
    if section not in sections:
        raise ConfigError(
            f"unknown section '{section}' in {source}; valid sections: {', '.join(sections)}")
    sec = getattr(cfg, section)
    hints = typing.get_type_hints(type(sec))
    if key not in hints:
        raise ConfigError(
            f"unknown key '{section}.{key}' in {source}; valid keys of '{section}': {', '.join(hints)}")
    where = f"{section}.{key} in {source}"
    value = _coerce(value, hints[key], where)
    _reject_control_characters(value, where)
    for choice in _declared(type(sec), key, Choice):
        if value not in choice.values:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(choice.values)}")
    for bound in _declared(type(sec), key, Range):
        for item in value if isinstance(value, list) else [value]:
            if (problem := bound.problem(item)) is not None:
                raise ConfigError(f"{where}: {item!r} {problem}")
    setattr(sec, key, value)
    if given is not None:
        given[(section, key)] = where


def _declared(section_type: type, key: str, kind: type) -> list:
    """The Range bounds or Choice lists declared on a field's annotation."""
    hint = typing.get_type_hints(section_type, include_extras=True)[key]
    if typing.get_origin(hint) is not Annotated:
        return []
    return [meta for meta in typing.get_args(hint)[1:] if isinstance(meta, kind)]


def _apply_mapping(cfg: Config, data: Any, source: str, given: dict | None = None) -> None:
    if data is None:
        return
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    if "task" in data:  # the one top-level key that is not a section
        _set_task(cfg, data["task"], source)
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
        raise ConfigError(f"override '{text}' must look like section.key=value, e.g. optimizer.lr=0.05")
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
    hint = typing.get_type_hints(sec.default_factory).get(key) if sec else None
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
        from core import storage  # the object-store stack only when a URL is given

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
                flags: dict[str, Any] | None = None) -> Config:
    """Builds the resolved config. Later layers win: defaults, file, overrides, flags.

    Args:
        path: YAML file with one mapping per section, or None for defaults only.
        overrides: dotted `section.key=value` strings from the command line.
        flags: `{"section.key": value}` from explicit command-line flags; None values are skipped.
    """
    cfg = Config()
    given: dict[tuple[str, str], str] = {}  # (section, key) -> where it was set last
    data = load_yaml(path) if path is not None else None
    _apply_mapping(cfg, data, str(path), given)
    for text in overrides:
        section, key, value = parse_override(text)
        if not section:
            _set_task(cfg, value, f"override '{text}'")
            continue
        _set(cfg, section, key, value, f"override '{text}'", given)
    for dotted, value in (flags or {}).items():
        if value is not None:
            section, key = dotted.split(".", 1)
            flag = "--" + key.replace("_", "-")
            _set(cfg, section, key, value, f"flag {flag}", given)
    check_task_keys(cfg, given)
    runtime = data.get("runtime") if isinstance(data, dict) else None
    backend_given = ((isinstance(runtime, dict) and "backend" in runtime)
                     or any(parse_override(text)[:2] == ("runtime", "backend") for text in overrides)
                     or (flags or {}).get("runtime.backend") is not None)
    if note := resolve_backend(cfg, backend_given):
        print(f"launch: note: {note}", file=sys.stderr)
    check(cfg)
    return cfg


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
    for (section, key), where in given.items():
        owner = registry.owner_of(section, key)
        sec = getattr(cfg, section)
        if owner is not None and owner != cfg.task and getattr(sec, key) != getattr(type(sec)(), key):
            raise ConfigError(f"{where.split(' in ', 1)[-1]}: {section}.{key} is a key of task {owner}, but "
                              f"the task is {cfg.task}; remove it or set task: {owner}")
    if ("model", "name") not in given:
        cfg.model.name = registry.TASKS[cfg.task].default_model


def check(cfg: Config) -> None:
    """Cross-field rules that no single key can enforce."""
    entry = registry.TASKS[cfg.task]
    if cfg.model.name not in entry.models:
        raise ConfigError(f"model.name {cfg.model.name!r} is not a {cfg.task} model; valid names: "
                          f"{', '.join(entry.models)} (core/registry.py)")
    if cfg.data.source not in entry.sources:
        raise ConfigError(f"data.source {cfg.data.source!r} is not a {cfg.task} source; valid sources: "
                          f"{', '.join(entry.sources)}")
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


def from_dict(data: dict[str, Any], source: str = "resolved config") -> Config:
    """Rebuilds a Config from `Config.to_dict()` output (e.g. a run's config.yaml)."""
    cfg = Config()
    _apply_mapping(cfg, data, source)
    return cfg


def dump(cfg: Config) -> str:
    # libyaml's dumper when PyYAML has it: the same text, about 10x faster (a 1,000-point sweep).
    return yaml.dump(cfg.to_dict(), Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False)
