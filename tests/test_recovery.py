"""Recovery without a person (core/recovery.py): which failed steps are retried, and, on the
local cluster, a requeued job whose step is killed at once comes back by itself and completes.

That job runs a script from `launch --emit-sbatch`, submitted by hand from another folder, as
written before the shared modules moved to core/ (it calls `python -m launcher.runstatus settle`,
which decides the automatic requeue): module paths that scripts already in the queue call stay
valid."""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys

import pytest

from core import recovery
from slurm_jobs import (DEMO, ONE_CPU, REPO, epochs_done, history_epochs, job_field, status, trainer_report,
                        trainer_restart_count, trainers_held, wait, wait_final)


@pytest.mark.parametrize("exit_code, seconds, restarts, continuations, cancelled, retried", [
    (137, 5, 1, 0, False, True),  # a requeued job's step killed at once: retried
    (137, 5, 0, 0, False, False),  # a first start that dies: its cause needs a look
    (137, 600, 1, 0, False, False),  # it trained a while first: not a leftover's kill
    (1, 5, 1, 0, False, False),  # the trainer failed on its own
    (137, 5, 1, 0, True, False),  # a cancel: the user's word
    (137, 5, 2, 1, False, False),  # the requeue limit (3) is spent
])
def test_only_a_requeued_jobs_quick_death_is_retried(exit_code, seconds, restarts, continuations, cancelled,
                                                     retried):
    assert recovery.should_retry(exit_code, seconds, restarts, continuations, 3, cancelled) is retried


@pytest.mark.slurm
@pytest.mark.slow
def test_a_requeued_job_killed_at_start_is_requeued_again_and_completes(tmp_path):
    script = tmp_path / "by hand.sbatch"
    done = subprocess.run([sys.executable, "-m", "launcher.cli", "--config", DEMO, "--run-root", str(tmp_path / "runs"),
                           "--emit-sbatch", str(script), "train.epochs=3", "slurm.max_requeues=3", ONE_CPU],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert f"sbatch {shlex.quote(str(script))}" in done.stdout  # the hint, quoted for the shell
    text = script.read_text()
    assert " -m core.runstatus settle " in text
    script.write_text(text.replace(" -m core.runstatus settle ", " -m launcher.runstatus settle "))
    (run_dir,) = (tmp_path / "runs").iterdir()
    job_id = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True,
                            check=True, cwd=tmp_path).stdout.strip().split(";")[0]
    wait(lambda: epochs_done(run_dir) >= 1, job_id, 400, "epoch 1")
    with trainers_held(run_dir, job_id):
        subprocess.run(["scontrol", "requeue", job_id], check=True)
    wait(lambda: job_field(job_id, "Restarts") == "1", job_id, 60, "the requeue")
    wait(lambda: trainer_restart_count(run_dir) == "1", job_id, 300, "the restarted trainer")
    os.kill(trainer_report(run_dir)["pid"], signal.SIGKILL)  # as a failed node's leftover step would
    wait(lambda: job_field(job_id, "Restarts") == "2", job_id, 120, "the automatic requeue")
    assert wait_final(job_id, 600) == "COMPLETED"
    assert history_epochs(run_dir) == [1, 2, 3]
    assert status(run_dir)["state"] == "completed"
    err = (run_dir / "logs" / f"slurm-{job_id}.err").read_text()
    assert "requeued again: the restarted job's step died in its first seconds" in err
    assert "launch --resume" not in err  # nobody is asked to do what SLURM is doing
    assert "No module named" not in err
