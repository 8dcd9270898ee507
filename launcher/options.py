"""What every launch command shares: the packaged default config, the command-line flags that
set config keys (declared once here), and the config as a job sees it."""
from __future__ import annotations

import sys
from pathlib import Path

from core.config import Config
from launcher.resume import absolute_paths

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "configs" / "demo.yaml"

# argparse dest -> config key. Each flag also has an alias spelled like its key, so that config
# errors ("flag --gpus-per-node") name a flag that exists. First the site options every job
# command takes (launcher/commands.py: eval, predict, gpucheck, convert) ...
SITE_FLAGS = {
    "gpu_type": "slurm.gpu_type",
    "gpu_style": "slurm.gpu_style",
    "time": "slurm.time_min",
    "partition": "slurm.partition",
    "account": "slurm.account",
    "qos": "slurm.qos",
    "job_name": "slurm.job_name",
    "cluster": "runtime.cluster",
}
# ... and a training run's, which also sets its shape, backend and run root.
FLAGS = {
    "nodes": "slurm.nodes",
    "gpus": "slurm.gpus_per_node",
    "backend": "runtime.backend",
    "run_root": "runtime.run_root",
    **SITE_FLAGS,
}


def for_job(cfg: Config, run_dir: Path, cwd: Path) -> Config:
    """`cfg` as the job will see it, filled in place: paths absolute (relative to where launch ran,
    as the user meant), the run's root and name, the interpreter, and the job name where none was
    set. A sweep's points all carry their array's job name, set before this."""
    absolute_paths(cfg, cwd)
    cfg.runtime.run_root = str(run_dir.parent)
    cfg.runtime.run_name = run_dir.name
    cfg.runtime.python = cfg.runtime.python or sys.executable
    cfg.slurm.job_name = cfg.slurm.job_name or run_dir.name
    return cfg
