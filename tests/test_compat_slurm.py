"""A job whose batch script was written before the shared modules moved to core/ (it runs
`python -m launcher.runstatus settle` when its step fails) still requeues and completes: module
paths that scripts already in the queue call stay valid."""
from __future__ import annotations

import subprocess
import sys

import pytest

from slurm_jobs import (DEMO, REPO, epochs_done, history_epochs, job_field, status, trainers_held, wait,
                        wait_final)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def test_a_script_written_before_the_move_requeues_and_completes(tmp_path):
    script = tmp_path / "old.sbatch"
    done = subprocess.run([sys.executable, "-m", "launcher.cli", "--config", DEMO, "--run-root",
                           str(tmp_path / "runs"), "--emit-sbatch", str(script), "train.epochs=3"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    text = script.read_text()
    assert " -m core.runstatus settle " in text
    script.write_text(text.replace(" -m core.runstatus settle ", " -m launcher.runstatus settle "))
    (run_dir,) = (tmp_path / "runs").iterdir()

    job_id = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True,
                            check=True, cwd=REPO).stdout.strip().split(";")[0]
    wait(lambda: epochs_done(run_dir) >= 1, job_id, 400, "epoch 1")
    with trainers_held(run_dir, job_id):
        subprocess.run(["scontrol", "requeue", job_id], check=True)
    wait(lambda: job_field(job_id, "Restarts") == "1", job_id, 60, "the requeue")
    assert wait_final(job_id, 600) == "COMPLETED"
    assert history_epochs(run_dir) == [1, 2, 3]  # each epoch once, across the requeue
    assert status(run_dir)["state"] == "completed"
    err = "".join(p.read_text() for p in (run_dir / "logs").glob("*.err"))
    assert "No module named" not in err
