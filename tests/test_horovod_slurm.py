"""Horovod on the real local SLURM cluster: 4 ranks over 2 nodes, one per (fake) GPU, started
by srun with a Gloo rendezvous; the run survives a requeue and every rank ends identical."""
from __future__ import annotations

import csv
import json
import subprocess

import pytest

from core import rundir
from slurm_jobs import (epochs_done, final_weights_load, history_epochs, job_field, launch, status,
                        trainers_held, wait, wait_final)

pytestmark = [pytest.mark.slurm, pytest.mark.horovod, pytest.mark.slow]
EPOCHS = 5


def test_four_ranks_on_two_nodes_train_identically_and_survive_a_requeue(tmp_path, slurm_cluster):
    job_id, run_dir = launch(tmp_path, "--nodes", "2", "--gpus", "2", "--gpu-type", "a100",
                             "--backend", "horovod", "slurm.cpus_per_task=1", f"train.epochs={EPOCHS}")
    wait(lambda: epochs_done(run_dir) >= 2, job_id, 600, "epoch 2")
    with trainers_held(run_dir, job_id):
        subprocess.run(["scontrol", "requeue", job_id], check=True)
    wait(lambda: job_field(job_id, "Restarts") == "1", job_id, 60, "the requeue")
    assert wait_final(job_id, 900) == "COMPLETED"

    ranks = [json.loads((run_dir / rundir.LOGS / f"rank-{r}.json").read_text()) for r in range(4)]
    assert {r["world_size"] for r in ranks} == {4}
    assert sorted(r["node"] for r in ranks) == ["node1", "node1", "node2", "node2"]
    assert len({r["trainable_weights_sha256"] for r in ranks}) == 1, "ranks ended with different weights"
    shards = [set(r["train_shards"]) for r in ranks]
    assert all(shards) and sum(map(len, shards)) == len(set().union(*shards)), "ranks shared shards"

    assert history_epochs(run_dir) == list(range(1, EPOCHS + 1))
    with open(run_dir / rundir.HISTORY) as fh:
        last = list(csv.DictReader(fh))[-1]
    assert float(last["val_accuracy"]) >= 0.90, last  # the same bar as the other backends
    assert status(run_dir)["restarts"] == 1
    final_weights_load(run_dir)
