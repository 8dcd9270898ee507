"""The job's part of RUN_DIR/logs/provenance.json (core/provenance.py): the software stack and
the hardware the run trains on, recorded by the chief at start and shown as text in TensorBoard.
"""
from __future__ import annotations

import importlib.metadata
import platform
from pathlib import Path
from typing import Any

from core import provenance, rundir
from core.config import Config
from training.gpucheck import cuda_wheels


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def job_record(cfg: Config, backend) -> dict[str, Any]:
    """Versions (from package metadata and TensorFlow's build info: no Horovod import, no
    nvidia-smi) and the layout this job runs with."""
    from training.keras_compat import keras, tf  # defers TensorFlow

    build = dict(tf.sysconfig.get_build_info())
    cuda_build = bool(build.get("is_cuda_build"))
    wheels = cuda_wheels()
    nccl = next((v for k, v in wheels.items() if k.startswith("nvidia-nccl-cu")), None)
    hosts = sorted(set(backend.spec.hosts))
    return {
        "project_version": provenance.project_version(),
        "code": {"path": str(provenance.CODE_DIR), **(provenance.git_state(provenance.CODE_DIR) or {})},
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": getattr(keras, "__version__", None) or _version("tf-keras"),
        "cuda": build.get("cuda_version") if cuda_build else None,
        "cudnn": build.get("cudnn_version") if cuda_build else None,
        "nccl": nccl,  # the NCCL wheel beside TensorFlow; None: none, or the system's library
        "horovod": _version("horovod"),
        "backend": backend.name,
        "nodes": len(hosts),
        "hosts": hosts,
        "processes": backend.world_size,
        "gpus_per_node": cfg.slurm.gpus_per_node,
        "gpus_seen_by_chief": len(tf.config.list_physical_devices("GPU")),
        "replicas": backend.num_replicas,
        "job_id": backend.spec.job_id,
    }


def as_text(whole: dict[str, Any]) -> str:
    """provenance.json as Markdown for TensorBoard's text tab: one `part.key: value` a line."""
    lines = []
    for part, record in sorted(whole.items()):
        for key, value in sorted(record.items()) if isinstance(record, dict) else [("", record)]:
            lines.append(f"{part}.{key}: {value}")
    return "```\n" + "\n".join(lines) + "\n```"


def record(cfg: Config, run_dir: Path, backend) -> dict[str, Any]:
    """Chief only: writes the job part of provenance.json and the whole file as TensorBoard text
    (tag "provenance", beside the config); returns the whole record."""
    from training.keras_compat import tf  # defers TensorFlow

    whole = provenance.write_part(run_dir, "job", job_record(cfg, backend))
    writer = tf.summary.create_file_writer(str(Path(run_dir) / rundir.TENSORBOARD / "config"))
    with writer.as_default():
        tf.summary.text("provenance", as_text(whole), step=0)
    writer.close()
    return whole
