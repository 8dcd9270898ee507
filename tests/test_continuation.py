"""The continuation job of a run SLURM will not requeue (launcher/continuation.py), as rendered."""
from __future__ import annotations

from core.config import Config, dump
from launcher.continuation import continuation_script
from launcher.render import render_sbatch


def test_the_continuation_is_the_runs_script_held_until_the_job_ends(tmp_path):
    cfg = Config()
    cfg.slurm.job_name, cfg.runtime.python, cfg.slurm.extra = "demo-1", "/opt/py", ["--no-requeue"]
    (tmp_path / "config.yaml").write_text(dump(cfg))
    script, asked = continuation_script(tmp_path, "41_3")
    lines = script.splitlines()
    assert lines[1] == "#SBATCH --dependency=afterany:41_3"
    own = render_sbatch(cfg.slurm, cfg.runtime.backend, tmp_path, "/opt/py", cfg.runtime.worker_timeout_s)
    assert [lines[0], *lines[2:]] == own.splitlines()
    assert "#SBATCH --no-requeue" in lines and "#SBATCH --requeue" not in lines  # the site's choice stays
    assert "--cpus-per-task=8" in asked
