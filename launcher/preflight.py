"""What `launch` checks before it creates or submits anything, so a job does not fail after its wait.

    data      the data dir exists and is readable; the train and val shards exist, are not empty
              and match the converter's manifest in labels.json (one stat per shard, or one
              listing of an s3:// prefix); classes agree
    mirror    the bucket of storage.mirror exists and the credentials can list it
    cluster   the request fits the partition: nodes, GPUs of the type, CPUs, memory per node, time
              (`scontrol show partition|node`); the error names the largest request that fits
    disk      the run root has room for a run directory
    container a local image exists and is readable, the engine is there (Pyxis: srun takes
              --container-image; Apptainer: on PATH, else a warning), the mounts' sources exist

Ranges of single values (lr > 0, dropout in [0, 1), ...) are declared on the config fields and
checked when the config loads. `launch --no-preflight` skips this module. It never imports
TensorFlow: it runs on login nodes, for every `launch`, `--dry-run` included.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from core import registry, storage
from core import slurm as slurm_cli
from core.config import Config, ConfigError, DataConfig, SlurmConfig, StorageConfig
from core.layout import LABELS_FILE, shard_prefix
from launcher.container import check as check_container
from launcher.preflight_text import check_text
from launcher.render import tasks_per_node

MIN_FREE_BYTES = 64 << 20  # below this a run cannot even write its first checkpoint
# squeue reasons that do not clear by waiting: the job sits in the queue until someone acts.


def run(cfg: Config, to_slurm: bool, dry_run: bool) -> list[str]:
    """Runs every check for a launch; raises ConfigError (one line) for the first problem.

    Args:
        cfg: the loaded config.
        to_slurm: the job goes to SLURM (submitted, or emitted for sbatch), so it must fit there.
        dry_run: nothing will be written. Data problems are then warnings: a dry run previews the
            script, often before the data is in place (the shipped configs hold placeholder paths).

    Returns:
        Warnings, one line each.
    """
    notes = []
    data_checks = (lambda: check_data(cfg.data, registry.TASKS[cfg.task].checked_layouts, cfg.storage.endpoint_url),
                   lambda: check_text(cfg), lambda: check_mirror(cfg.storage))
    for check in data_checks:
        try:
            check()
        except ConfigError as err:
            if not dry_run:
                raise
            notes.append(f"{err} (launch without --dry-run refuses this)")
    if cfg.container.image or cfg.container.engine:
        notes += check_container(cfg, to_slurm)
    if to_slurm:
        notes += check_cluster(cfg.slurm, cfg.runtime.backend)
    if not dry_run:
        check_disk(cfg.runtime.run_root)
    return notes


def check_mirror(storage_cfg: StorageConfig) -> None:
    """The mirror's bucket exists and these credentials can list it (one request)."""
    if storage_cfg.mirror:
        storage.check_bucket(storage_cfg.mirror, storage_cfg.endpoint_url)


def check_data(data: DataConfig, layouts: tuple[str, ...] = ("tfrecord", "folder"), endpoint_url: str = "") -> None:
    """Data a job could not read, for the sources in `layouts` (the task's: text folders are
    checked by launcher/preflight_text.py). demo and synthetic have no files to check; s3:// shards
    are checked by one listing and one read of labels.json; other URLs (gs://...) are left to the job."""
    if data.source == "demo" and data.data_dir and "://" not in data.data_dir:
        # The demo's data set is built in data.data_dir (its cache root): a folder like any other.
        if not Path(data.data_dir).expanduser().is_dir():
            raise ConfigError(f"data.data_dir {data.data_dir} does not exist; the demo builds its data set "
                              "in that folder: create it, or leave data.data_dir unset for the default cache")
        return
    if data.source not in layouts:
        return
    if data.data_dir.startswith("s3://"):
        url = data.data_dir.rstrip("/")
        objects = storage.listing(url, endpoint_url)
        if not objects:
            raise ConfigError(f"data.data_dir {url} holds no objects; upload the converter's shards and "
                              f"{LABELS_FILE} there, or fix the URL")
        labels = None
        if LABELS_FILE in objects:
            labels = _parse_labels(f"{url}/{LABELS_FILE}",
                                   lambda: storage.read_text(f"{url}/{LABELS_FILE}", endpoint_url))
        _check_shards(data, url, {name: o["size"] for name, o in objects.items()}, labels)
        return
    if "://" in data.data_dir:
        return
    root = Path(data.data_dir).expanduser()
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise ConfigError(f"data.data_dir {root} {what}; set data.data_dir to the folder that holds "
                          f"the {'TFRecord shards' if data.source == 'tfrecord' else 'train/ and val/ class folders'}")
    if not os.access(root, os.R_OK | os.X_OK):
        raise ConfigError(f"data.data_dir {root} is not readable by you; fix its permissions or copy the data")
    if data.source == "tfrecord":
        sizes = {entry.name: entry.stat().st_size for entry in os.scandir(root) if entry.is_file()}
        path = root / LABELS_FILE
        _check_shards(data, str(root), sizes, _parse_labels(str(path), path.read_text) if path.is_file() else None)
    else:
        _check_class_folders(data, root)


def _check_shards(data: DataConfig, root: str, files: dict[str, int], labels: dict | None) -> None:
    """Checks the shards of a folder or prefix `root`, given its files' sizes and its labels.json."""
    sizes = {name: size for name, size in files.items()
             if any(name.startswith(shard_prefix(data, s) + "-") for s in ("train", "val"))}
    manifest = labels.get("shards") if labels else None
    for split, key in (("train", "data.train_split"), ("val", "data.val_split")):
        prefix = shard_prefix(data, split)
        found = sorted(name for name in sizes if name.startswith(prefix + "-"))
        if not found:
            raise ConfigError(f"no TFRecord shards named {prefix}-* in {root}; check data.data_dir and {key}")
        for name in found:
            if sizes[name] == 0:
                raise ConfigError(f"{root}/{name} is empty (0 bytes); re-run the converter "
                                  "(python -m training.data.convert) or remove the shard")
        if isinstance(manifest, dict):
            _match_manifest(root, prefix, {name: sizes[name] for name in found}, manifest)
    if labels is None:
        if data.num_classes <= 0:
            raise ConfigError(f"{root} has no {LABELS_FILE}, so set data.num_classes (for the standard "
                              "ImageNet shards: data.num_classes=1000 data.label_offset=1)")
        return
    classes, offset = labels.get("classes", []), labels.get("label_offset", 0)
    if data.num_classes and data.num_classes != len(classes):
        raise ConfigError(f"data.num_classes is {data.num_classes} but {root}/{LABELS_FILE} lists "
                          f"{len(classes)} classes; set data.num_classes=0 to use the file")
    if offset != data.label_offset:
        raise ConfigError(f"{root}/{LABELS_FILE} says label_offset {offset} but data.label_offset is "
                          f"{data.label_offset}; set data.label_offset={offset}")


def _parse_labels(path: str, read) -> dict:
    try:
        labels = json.loads(read())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path} cannot be read as JSON ({err}); re-run the converter") from None
    if not isinstance(labels, dict):
        raise ConfigError(f"{path} is not a JSON object; re-run the converter")
    return labels


def _match_manifest(root: str, prefix: str, sizes: dict[str, int], manifest: dict) -> None:
    """Compares one split's shards with the sizes the converter recorded."""
    listed = {name: entry for name, entry in manifest.items() if name.startswith(prefix + "-")}
    labels = f"{root}/{LABELS_FILE}"
    if missing := sorted(set(listed) - set(sizes)):
        raise ConfigError(f"{root}/{missing[0]} is missing: {labels} lists {len(listed)} {prefix} shards, "
                          f"{len(sizes)} are there; copy the missing shards or re-run the converter")
    if extra := sorted(set(sizes) - set(listed)):
        raise ConfigError(f"{root}/{extra[0]} is not in the manifest of {labels} ({len(listed)} {prefix} "
                          f"shards, {len(sizes)} there); remove it or re-run the converter")
    for name, size in sizes.items():
        recorded = listed[name].get("bytes") if isinstance(listed[name], dict) else None
        if recorded is not None and recorded != size:
            raise ConfigError(f"{root}/{name} is {size} bytes but {labels} records {recorded}: the shard "
                              "is truncated or was replaced; copy it again or re-run the converter")


def _check_class_folders(data: DataConfig, root: Path) -> None:
    def split_dir(name: str, key: str) -> Path:
        path = root / name
        if name == "validation" and not path.is_dir():
            path = root / "val"  # class-folder trees usually call it val/, as the pipeline allows
        if not path.is_dir():
            raise ConfigError(f"{root / name} is not a folder; data.source folder needs "
                              f"{root}/<split>/<class>/<image> (set {key})")
        return path

    def classes(path: Path) -> set[str]:
        return {e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith(".")}

    train = split_dir(data.train_split, "data.train_split")
    known = classes(train)
    if not known:
        raise ConfigError(f"{train} holds no class sub-folders; expected {train}/<class>/<image>")
    val = split_dir(data.val_split, "data.val_split")
    if unknown := sorted(classes(val) - known):
        raise ConfigError(f"{val / unknown[0]} is a class that {train} lacks; every class needs "
                          "training images")
    if data.num_classes and data.num_classes != len(known):
        raise ConfigError(f"data.num_classes is {data.num_classes} but {train} has {len(known)} class "
                          "folders; set data.num_classes=0 to use the folders")



@dataclass
class Node:
    name: str
    cpus: int
    mem_mb: int
    gpus: dict[str, int]  # GRES gpu type ("" when untyped) -> count
    features: set[str] = field(default_factory=set)


@dataclass
class Partition:
    name: str
    default: bool
    max_nodes: int | None  # None = unlimited
    max_time_min: int | None
    max_cpus_per_node: int | None
    max_mem_mb: int | None
    nodes: list[Node] = field(default_factory=list)


def _records(text: str) -> list[dict[str, str]]:
    """`scontrol show ... -o` output: one record per line of Key=Value words."""
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in text.splitlines() if "=" in line]


def _limit(text: str | None) -> int | None:
    return None if not text or not text.isdigit() else int(text)


def time_minutes(text: str) -> int | None:
    """A SLURM time limit (UNLIMITED, MM, MM:SS, HH:MM:SS, D-HH[:MM[:SS]]) in whole minutes."""
    if not text or text.upper() in ("UNLIMITED", "INFINITE", "NONE"):
        return None
    days, _, clock = text.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if days:  # D-HH, D-HH:MM, D-HH:MM:SS
        hours, minutes = parts[0], (parts[1] if len(parts) > 1 else 0)
    elif len(parts) == 3:
        hours, minutes = parts[0], parts[1]
    else:  # MM or MM:SS
        hours, minutes = 0, parts[0]
    return int(days or 0) * 1440 + hours * 60 + minutes


def gres_gpus(text: str) -> dict[str, int]:
    """`gpu:a100:2(S:0-1),gpu:v100:1,shard:4` -> {"a100": 2, "v100": 1}."""
    gpus: dict[str, int] = {}
    for item in text.split(","):
        parts = re.sub(r"\(.*?\)", "", item).split(":")
        if parts[0] != "gpu" or len(parts) < 2 or not parts[-1].isdigit():
            continue
        kind = parts[1] if len(parts) > 2 else ""
        gpus[kind] = gpus.get(kind, 0) + int(parts[-1])
    return gpus


def mem_mb(text: str) -> int | None:
    """sbatch --mem syntax (64G, 8000M, 8000 = MB) in MB; None for "" and 0 (all of a node's)."""
    found = re.fullmatch(r"(\d+)([KMGT]?)B?", text.strip().upper())
    if not found:
        raise ConfigError(f"slurm.mem {text!r} is not sbatch memory syntax; write e.g. 64G or 8000M")
    number = int(found.group(1))
    scale = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}[found.group(2)]
    return int(number * scale) or None


def parse_cluster(partitions_text: str, nodes_text: str) -> dict[str, Partition]:
    """Partitions and their nodes from `scontrol show partition -o` and `scontrol show node -o`."""
    parts = {}
    for rec in _records(partitions_text):
        if "PartitionName" not in rec:
            continue
        parts[rec["PartitionName"]] = Partition(
            rec["PartitionName"], rec.get("Default") == "YES", _limit(rec.get("MaxNodes")),
            time_minutes(rec.get("MaxTime", "")), _limit(rec.get("MaxCPUsPerNode")),
            _limit(rec.get("MaxMemPerNode")))
    for rec in _records(nodes_text):
        if "NodeName" not in rec:
            continue
        node = Node(rec["NodeName"], int(rec.get("CPUEfctv") or rec.get("CPUTot") or 0),
                    int(rec.get("RealMemory") or 0), gres_gpus(rec.get("Gres", "")),
                    set(filter(None, rec.get("AvailableFeatures", "").replace("(null)", "").split(","))))
        for name in rec.get("Partitions", "").split(","):
            if name in parts:
                parts[name].nodes.append(node)
    return parts


def check_cluster(slurm: SlurmConfig, backend: str) -> list[str]:
    """Checks the request against the partition it goes to; returns warnings when SLURM cannot
    be asked (the request then goes unchecked, and sbatch has the last word)."""
    if not slurm_cli.can_query():
        return []  # no SLURM client here: launch itself says what is missing
    try:
        parts = parse_cluster(slurm_cli.show("partition"), slurm_cli.show("node"))
    except (OSError, subprocess.SubprocessError, ValueError) as err:
        return [f"could not ask SLURM about its partitions ({err}); the request was not checked"]
    names = [n for n in slurm.partition.split(",") if n] or [p.name for p in parts.values() if p.default]
    if not names:
        return []  # no default partition: sbatch will say so
    for name in names:
        if name not in parts:
            raise ConfigError(f"slurm.partition {name!r}: no such partition; this cluster has "
                              f"{', '.join(parts) or 'none'} (set --partition)")
    problems = [fit_problem(slurm, backend, parts[name]) for name in names]
    if all(problems):
        raise ConfigError(problems[0])
    return []


def fit_problem(slurm: SlurmConfig, backend: str, part: Partition) -> str | None:
    """Why the request can never run in `part`, naming the largest request that fits, or None."""
    nodes = 1 if backend == "mirrored" else slurm.nodes
    tasks = tasks_per_node(slurm, backend)
    where = f"partition {part.name}"
    have = min(len(part.nodes), part.max_nodes or len(part.nodes))
    if nodes > have:
        return (f"slurm.nodes={nodes} asks for {nodes} nodes but {where} has {have}: "
                f"use --nodes {have}" if have else f"{where} has no nodes; choose another --partition")
    candidates = part.nodes
    if slurm.gpus_per_node:
        by_feature = slurm.gpu_style == "constraint" and slurm.gpu_type

        def gpus(node: Node) -> int:
            if by_feature:
                return sum(node.gpus.values()) if slurm.gpu_type in node.features else 0
            return node.gpus.get(slurm.gpu_type, 0) if slurm.gpu_type else sum(node.gpus.values())

        most = max((gpus(n) for n in candidates), default=0)
        kind = f"{slurm.gpu_type} " if slurm.gpu_type else ""
        if most == 0 and slurm.gpu_type:
            types = sorted({t for n in candidates for t in (n.features if by_feature else n.gpus) if t})
            fix = f"use --gpu-type {' or '.join(types)}" if types else "drop --gpu-type"
            return f"slurm.gpu_type={slurm.gpu_type}: no node of {where} has {slurm.gpu_type} GPUs; {fix}"
        if slurm.gpus_per_node > most:
            fix = f"use --gpus {most}" if most else "use --gpus 0 or another --partition"
            return (f"slurm.gpus_per_node={slurm.gpus_per_node} asks for {slurm.gpus_per_node} {kind}GPUs "
                    f"per node but the largest node of {where} has {most}: {fix}")
        candidates = [n for n in candidates if gpus(n) >= slurm.gpus_per_node]
    cpus = slurm.cpus_per_task * tasks
    most = max(min(n.cpus, part.max_cpus_per_node or n.cpus) for n in candidates)
    if cpus > most:
        fit = most // tasks
        fix = (f"use slurm.cpus_per_task={fit}" if fit else
               "use fewer GPUs per node (horovod runs one task per GPU)")
        return (f"slurm.cpus_per_task={slurm.cpus_per_task} × {tasks} task{'s' if tasks > 1 else ''} per "
                f"node needs {cpus} CPUs but the largest node of {where} has {most}: {fix}")
    candidates = [n for n in candidates if min(n.cpus, part.max_cpus_per_node or n.cpus) >= cpus]
    memory = mem_mb(slurm.mem) if slurm.mem else None
    if memory:
        most = max(min(n.mem_mb, part.max_mem_mb or n.mem_mb) for n in candidates)
        if memory > most:
            return (f"slurm.mem={slurm.mem} asks for {memory} MB per node but the largest node of {where} "
                    f"that fits the rest has {most} MB: use slurm.mem={most}M")
        candidates = [n for n in candidates if min(n.mem_mb, part.max_mem_mb or n.mem_mb) >= memory]
    if nodes > len(candidates):
        return (f"slurm.nodes={nodes}: only {len(candidates)} node(s) of {where} have {cpus} CPUs"
                f"{f', {slurm.gpus_per_node} GPUs' if slurm.gpus_per_node else ''} each: "
                f"use --nodes {len(candidates)} or a smaller request per node")
    if part.max_time_min is not None and slurm.time_min > part.max_time_min:
        return (f"slurm.time_min={slurm.time_min} is above the time limit of {where} "
                f"({part.max_time_min} min): use --time {part.max_time_min}")
    return None


def job_warning(job_id: str) -> str | None:
    """One look at a job just submitted: a warning when SLURM says it cannot start as asked."""
    reason = slurm_cli.pending_reason(job_id)
    if not reason or not reason.startswith(slurm_cli.NEVER_RUNS):
        return None
    return (f"job {job_id} is queued but SLURM says it cannot start (Reason={reason}), which waiting "
            f"does not clear; see scontrol show job {job_id}, then scancel {job_id} and launch a "
            "smaller request")



def check_disk(run_root: str) -> None:
    """The run root (or the folder that will hold it) has room and is writable."""
    root = Path(run_root).expanduser().resolve()
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < MIN_FREE_BYTES:
        raise ConfigError(f"only {free >> 20} MB free on {probe} (run root {root}); free space there or "
                          "pass --run-root on a file system with room")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"run root {root}: {probe} is not writable by you; pass a --run-root you can write")
