"""Shards in object storage, staged once per node to node-local scratch.

Every process of a job calls `stage`; a file lock on the node makes the first one download and
the others wait for it, then find everything in place. What was staged is recorded with each
object's size and ETag (`.staged.json`), so a requeued job that lands on a node that already
holds the shards downloads nothing, and an object replaced in the bucket is fetched again.
TensorFlow then reads local files at local-disk speed.
"""
from __future__ import annotations

import concurrent.futures
import fcntl
import hashlib
import json
import os
import time
from pathlib import Path

from core import storage
from core.config import StorageConfig
from core.fsutil import atomic_write_text

RECORD = ".staged.json"
WORKERS = 8  # parallel downloads; object stores serve many streams far better than one
PROGRESS_S = 10  # a quick staging says one line; a long one also says how far it is


def scratch_root(storage_cfg: StorageConfig, environ=os.environ) -> Path:
    """storage.scratch, else the job's node-local temp folder, else /tmp."""
    return Path(storage_cfg.scratch or environ.get("SLURM_TMPDIR") or environ.get("TMPDIR") or "/tmp")


def local_folder(url: str, storage_cfg: StorageConfig, environ=os.environ) -> Path:
    """Where `url` is staged on this node: one folder per URL, named so a person can tell."""
    url = url.rstrip("/")
    tag = hashlib.sha1(url.encode()).hexdigest()[:12]
    return scratch_root(storage_cfg, environ) / "launch-staged" / f"{storage.bucket_of(url)}-{tag}"


def stage(url: str, storage_cfg: StorageConfig, log=print, environ=os.environ) -> Path:
    """Copies every object directly under `url` to this node's scratch (once per node) and
    returns the local folder that holds them."""
    url = url.rstrip("/")
    local = local_folder(url, storage_cfg, environ)
    local.mkdir(parents=True, exist_ok=True)
    with open(local / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one process per node downloads; the others wait here
        objects = storage.listing(url, storage_cfg.endpoint_url)
        if not objects:
            raise storage.StorageError(f"data.data_dir {url} holds no objects; upload the shards there")
        done = _read_record(local)
        todo = {name: obj for name, obj in objects.items()
                if done.get(name) != obj or not _complete(local / name, obj["size"])}
        started, total = time.monotonic(), sum(obj["size"] for obj in todo.values())
        _download(url, local, todo, storage_cfg.endpoint_url, total, log)
        atomic_write_text(local / RECORD, json.dumps(objects, indent=1, sort_keys=True))
        seconds = time.monotonic() - started
        log(f"staging: {len(todo)} of {len(objects)} objects downloaded ({total / 1e6:.1f} MB in "
            f"{seconds:.1f} s) from {url} to {local}; {len(objects) - len(todo)} already on this node")
    return local


def _complete(path: Path, size: int) -> bool:
    return path.is_file() and path.stat().st_size == size


def _read_record(local: Path) -> dict:
    try:
        return json.loads((local / RECORD).read_text())
    except (OSError, ValueError):
        return {}


def _download(url: str, local: Path, todo: dict[str, dict], endpoint_url: str, total: int, log) -> None:
    """Parallel downloads to `name.part`, each renamed once complete and of the listed size; a
    progress line at every tenth of the bytes once the download takes longer than PROGRESS_S."""
    got, next_report, quiet_until = 0, total / 10, time.monotonic() + PROGRESS_S

    def one(name: str) -> int:
        part = local / f"{name}.part"
        storage.download(f"{url}/{name}", str(part), endpoint_url)
        size = part.stat().st_size
        if size != todo[name]["size"]:
            part.unlink(missing_ok=True)
            raise storage.StorageError(f"{url}/{name}: downloaded {size} bytes, the store lists "
                                       f"{todo[name]['size']}; the object changed while staging, so "
                                       "resubmit the job")
        os.replace(part, local / name)
        return size

    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        for size in pool.map(one, sorted(todo)):
            got += size
            if total and got >= next_report and got < total:
                if time.monotonic() > quiet_until:
                    log(f"staging: {got / 1e6:.1f} of {total / 1e6:.1f} MB from {url}")
                while next_report <= got:
                    next_report += total / 10


def stage_file(url: str, storage_cfg: StorageConfig, environ=os.environ) -> Path:
    """One object (a weights or embeddings file) copied to this node's scratch once, under the
    same lock and record as the shards; returns the local file."""
    parent, name = url.rstrip("/").rsplit("/", 1)
    local = local_folder(parent, storage_cfg, environ)
    local.mkdir(parents=True, exist_ok=True)
    with open(local / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        objects = storage.listing(parent, storage_cfg.endpoint_url)
        if name not in objects:
            raise storage.StorageError(f"{url} does not exist; check the URL")
        done = _read_record(local)
        if done.get(name) != objects[name] or not _complete(local / name, objects[name]["size"]):
            _download(parent, local, {name: objects[name]}, storage_cfg.endpoint_url, objects[name]["size"],
                      log=lambda line: None)
            atomic_write_text(local / RECORD, json.dumps({**done, name: objects[name]}, indent=1, sort_keys=True))
    return local / name
