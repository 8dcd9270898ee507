"""Where SLURM refuses to requeue (a job submitted --no-requeue, as on sites with JobRequeue=0),
the chief continues the run through a new job in the same run directory."""
from __future__ import annotations

import pytest

from slurm_jobs import (final_weights_load, history_epochs, job_field, launch, signal_while_held, status, wait,
                        wait_final)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def test_a_run_that_cannot_be_requeued_continues_in_a_dependent_job(slurm_cluster, tmp_path):
    job_id, run_dir = launch(tmp_path, "train.epochs=4", "train.steps_per_epoch=8", "train.validation_steps=2",
                             'slurm.extra=["--no-requeue"]')
    assert job_field(job_id, "Requeue") == "0"
    # The time-limit warning, sent while the trainer is held early on, so it lands mid-training at
    # any speed: the chief saves, SLURM refuses the requeue, a continuation follows.
    signal_while_held(job_id, run_dir, "USR1")
    wait(lambda: len((run_dir / "jobs.txt").read_text().split()) == 2, job_id, 120, "the continuation job")
    follower = (run_dir / "jobs.txt").read_text().split()[-1]
    assert job_field(follower, "Dependency") in (f"afterany:{job_id}(unfulfilled)", "(null)")
    assert wait_final(job_id, 120) == "COMPLETED"
    assert wait_final(follower, 600) == "COMPLETED"
    assert [p.name for p in tmp_path.iterdir()] == [run_dir.name]  # the same run directory
    assert history_epochs(run_dir) == [1, 2, 3, 4]
    assert status(run_dir)["state"] == "completed" and status(run_dir)["continuations"] == 1
    log = (run_dir / "logs" / f"slurm-{job_id}.out").read_text()
    assert f"requeued as continuation job {follower}" in log, log[-2000:]
    assert "resumed from latest-" in (run_dir / "logs" / f"slurm-{follower}.out").read_text()
    final_weights_load(run_dir)
