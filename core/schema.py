"""The run configuration's schema: one dataclass per section, each field documented where it is
declared, with its range or choices (Range, Choice) beside it. core/config.py loads and checks it.

Each component receives only its own section. Imported on login nodes: free of TensorFlow.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Annotated, Any

from core import registry, rundir

BACKENDS = registry.BACKENDS
GPU_STYLES = ("gres", "gpus-per-node", "constraint")
PRECISIONS = ("float32", "bfloat16", "float16")
CLUSTERS = ("auto", "slurm", "local")
CONTAINER_ENGINES = ("", "pyxis", "apptainer")  # "" = none
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
    synthetic_classes: Annotated[int, COUNT] = 1000  # classes in synthetic mode
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

    name: Annotated[str, Choice(registry.OPTIMIZERS)] = "sgd"  # sgd has momentum and nesterov below
    lr: Annotated[float, Range(gt=0)] = 0.1  # peak learning rate at base_batch_size
    momentum: Annotated[float, PROBABILITY] = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    # Decoupled decay (the tf-keras optimizer's own weight_decay, all three optimizers): each step
    # every trainable weight, biases and BN scales included, shrinks by lr * weight_decay * w,
    # apart from the gradient and momentum; not an L2 term in the loss. 0 = none; e.g. 1e-4 for sgd.
    weight_decay: Annotated[float, NON_NEGATIVE] = 0.0
    scale_lr: bool = True  # linear scaling: lr * global_batch / base_batch_size
    base_batch_size: Annotated[int, COUNT] = 256  # batch the lr was tuned for
    label_smoothing: Annotated[float, PROBABILITY] = 0.0  # of the one-hot targets in the loss; 0 = none
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
    # applied to each text before it is split into tokens
    standardize: Annotated[str, Choice(("lower_and_strip_punctuation", "lower", "strip_punctuation", "none"))] = \
        "lower_and_strip_punctuation"
    split: Annotated[str, Choice(("whitespace", "character"))] = "whitespace"  # tokens are words or characters
    embedding_dim: Annotated[int, COUNT] = 128  # length of each token's vector
    hidden_dim: Annotated[int, COUNT] = 128  # units of each recurrent layer (per direction); dense units for bag_of_embeddings
    number_of_layers: Annotated[int, COUNT] = 1  # stacked recurrent layers
    bidirectional: bool = False  # lstm, gru: each layer reads the text both ways
    embeddings_file: str = ""  # GloVe text format (word v1 ... vd), d = embedding_dim; "" = random init
    embeddings_trainable: bool = True  # false freezes the embedding (pretrained vectors kept as they are)


@dataclass
class TrainConfig:
    """Loop length, numerics, checkpoint and logging cadence."""

    epochs: Annotated[int, COUNT] = 90  # passes over the training split (of steps_per_epoch steps when set)
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

    backend: Annotated[str, Choice(registry.BACKENDS)] = "mirrored"  # processes: one (one node), one per node, one per GPU
    cluster: Annotated[str, Choice(CLUSTERS)] = "auto"  # auto: slurm when sbatch is on PATH
    run_root: str = rundir.DEFAULT_RUN_ROOT  # shared folder that holds one sub-folder per run
    run_name: str = ""  # "" = <config name>-<timestamp>
    python: str = ""  # interpreter on the compute nodes; "" = the one running launch
    # first worker port (multiworker); 0 = chosen per job: from the SLURM job id, or free ones when
    # local. Set one where a site opens only certain ports: rank r then listens on port + r locally,
    # on port + r % PORTS_PER_JOB under SLURM (training/cluster.py)
    port: Annotated[int, Range(ge=0, le=65535)] = 0
    cpu_devices: Annotated[int, NON_NEGATIVE] = 0  # split the CPU into N logical devices when no GPU is present (tests)
    worker_timeout_s: Annotated[int, COUNT] = 120  # a lost worker ends the job within this many seconds
    allow_cpu: bool = False  # train even when the job got GPUs that TensorFlow cannot see
    verbose: bool = False  # keep TensorFlow's C++ start-up messages (TF_CPP_MIN_LOG_LEVEL=0) in the job's log


@dataclass
class SlurmConfig:
    """sbatch request. Site differences (GPU style, partition) belong here, not in templates."""

    nodes: Annotated[int, COUNT] = 1  # more than one needs multiworker or horovod
    gpus_per_node: Annotated[int, NON_NEGATIVE] = 0  # 0 = a CPU job
    gpu_type: str = ""  # e.g. a100; "" = any
    gpu_style: Annotated[str, Choice(GPU_STYLES)] = "gres"  # --gres=gpu:T:N, --gpus-per-node=T:N or --gpus-per-node=N --constraint=T
    cpus_per_task: Annotated[int, COUNT] = 8  # as sbatch reads it; horovod runs one task per GPU
    mem: str = ""  # per node, sbatch syntax (e.g. 64G); "" = site default
    time_min: Annotated[int, COUNT] = 60  # wall-clock limit, minutes
    signal_lead_s: Annotated[int, NON_NEGATIVE] = 300  # SIGUSR1 this many seconds before the limit: checkpoint and requeue
    max_requeues: Annotated[int, NON_NEGATIVE] = 3  # requeues and continuation jobs of one run, together
    partition: str = ""  # "" = the site's default partition
    account: str = ""  # the allocation charged; "" = the user's default
    qos: str = ""  # quality of service; "" = the site default
    constraint: str = ""  # extra node features, ANDed with the GPU type in constraint style
    job_name: str = ""  # "" = run name
    exclusive: bool = False  # the nodes are not shared with other jobs (--exclusive)
    setup: list[str] = field(default_factory=list)  # shell lines run before training (module load ...)
    # Site escape hatches (launcher/render.py checks and quotes them):
    extra: list[str] = field(default_factory=list)  # raw sbatch options, each --key or --key=value (--reservation=ml)
    exports: list[str] = field(default_factory=list)  # env var names the job gets from launch's shell (--export=ALL,NAME); values never written


@dataclass
class ContainerConfig:
    """The image every task of a job runs in: training, eval, predict, gpucheck and convert
    (launcher/container.py). A flat section, not runtime.container: overrides are section.key=value,
    one level deep."""

    engine: Annotated[str, Choice(CONTAINER_ENGINES)] = ""  # pyxis (srun --container-image) | apptainer; "" = pyxis when an image is set
    image: str = ""  # pyxis: squashfs path (absolute) or registry image (docker://, user/name:tag); apptainer: .sif path
    mounts: list[str] = field(default_factory=list)  # extra host folders, each src:dst[:flags]; run dir, data, scratch and the project are mounted already
    env: list[str] = field(default_factory=list)  # variable names passed into the container besides SLURM_*, TF_CONFIG, HOROVOD_*, AWS_*
    workdir: str = ""  # working directory inside; "" = the project checkout (mounted at its host path)


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
    container: ContainerConfig = field(default_factory=ContainerConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
