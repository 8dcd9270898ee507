"""A resume's job is submitted to start later and released once launch has written the run's
files (launcher/resume.py). Should launch die in between, SLURM starts the job by itself after
HELD_S; it must then stop in one line and leave the run as it was."""
from __future__ import annotations

import subprocess

import pytest

from core import slurm
from launcher import resume
from slurm_jobs import wait_final

pytestmark = pytest.mark.slurm


def _submit_held(run_dir) -> str:
    script = (f"#!/bin/bash\n#SBATCH --output={run_dir}/logs/slurm-%j.out\n#SBATCH --error={run_dir}/logs/slurm-%j.err\n"
              f"#SBATCH --time=5\nset -euo pipefail\ntouch {run_dir}/trained-by-$SLURM_JOB_ID\n")
    done = subprocess.run(["sbatch", "--parsable"], input=resume.held(script, run_dir), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_held_job_runs_only_once_launch_released_it(slurm_cluster, tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "logs").mkdir(parents=True)

    orphan = _submit_held(run_dir)  # its launch died before release
    assert slurm.start_now(orphan).returncode == 0  # what SLURM does by itself after HELD_S
    assert wait_final(orphan, 120) == "FAILED"
    err = (run_dir / "logs" / f"slurm-{orphan}.err").read_text()
    assert err == (f"launch: error: job {orphan} was submitted held by a launch that ended before writing "
                   f"{run_dir}; the run is as it was: launch --resume it again\n")
    assert not list(run_dir.glob("trained-by-*"))

    released = _submit_held(run_dir)
    resume.release(released, run_dir)
    assert wait_final(released, 120) == "COMPLETED"
    assert [p.name for p in run_dir.glob("trained-by-*")] == [f"trained-by-{released}"]
