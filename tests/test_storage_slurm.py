"""Real jobs on the local SLURM cluster with their data in a bucket and their run mirrored to
one, against moto's S3 server over HTTP: staged once per node, mirrored with a consistent
checkpoint, resumed from the mirror after the local run directory is gone, and no secret
written anywhere."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

from core import storage
from s3_server import SECRET, s3, s3_endpoint  # noqa: F401 (fixtures)
from slurm_jobs import REPO, epochs_done, history_epochs, launch, status, trainers_held, wait, wait_final

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
EPOCHS = 4


def upload_demo_shards(url: str) -> int:
    from training.data.demo import cache_root, prepare_demo

    folder = prepare_demo(cache_root())
    files = [p for p in folder.iterdir() if p.is_file()]
    for path in files:
        storage.upload(str(path), f"{url}/{path.name}")
    return len(files)


def test_bucket_data_and_mirror_survive_requeue_and_the_loss_of_the_run_dir(s3, tmp_path, slurm_cluster):
    objects = upload_demo_shards(f"{s3}/digits")
    mirror = f"{s3}/runs"
    job_id, run_dir = launch(tmp_path / "a", "data.source=tfrecord", f"data.data_dir={s3}/digits",
                             f"storage.mirror={mirror}", f"train.epochs={EPOCHS}")
    out = run_dir / "logs" / f"slurm-{job_id}.out"
    url = f"{mirror}/{run_dir.name}"

    # Requeued after its first checkpoint: the same node stages nothing again. (The mirror's
    # watcher may not have seen that checkpoint yet; the stopping start's last sync uploads it.)
    wait(lambda: epochs_done(run_dir) >= 1, job_id, 400, "epoch 1")
    assert f"{objects} of {objects} objects downloaded" in out.read_text()
    with trainers_held(run_dir, job_id):
        subprocess.run(["scontrol", "requeue", job_id], check=True)
    wait(lambda: f"0 of {objects} objects downloaded" in out.read_text(), job_id, 300, "the requeued job's staging")

    # Cancelled after an epoch of its own: it stops with a checkpoint, which reaches the mirror.
    before = epochs_done(run_dir)  # the first start has ended: its last epoch is in
    wait(lambda: epochs_done(run_dir) > before, job_id, 400, f"an epoch after {before}")
    with trainers_held(run_dir, job_id):
        subprocess.run(["scancel", job_id], check=True)
    assert wait_final(job_id, 120) != "COMPLETED"
    mirrored = json.loads(storage.read_bytes(f"{url}/checkpoints/latest.json"))
    assert storage.is_file(f"{url}/checkpoints/{mirrored['weights']}")
    assert mirrored["epoch"] >= 1

    # The run directory is lost; the run continues from the mirror.
    shutil.rmtree(run_dir)
    other = tmp_path / "b"
    done = subprocess.run([sys.executable, "-m", "launcher.cli", "--resume", url, "--run-root", str(other)],
                          capture_output=True, text=True, timeout=180, cwd=REPO)
    assert done.returncode == 0, done.stderr
    resumed_dir = other / run_dir.name
    assert "copied" in done.stderr and str(resumed_dir) in done.stderr
    resumed = re.search(r"^submitted job (\d+)", done.stdout, re.M).group(1)
    assert wait_final(resumed, 900) == "COMPLETED", (resumed_dir / "logs" / f"slurm-{resumed}.out").read_text()[-3000:]
    assert history_epochs(resumed_dir) == list(range(1, EPOCHS + 1))
    assert status(resumed_dir)["state"] == "completed"

    # The mirror holds a loadable best model, the summary, TensorBoard events and an index entry.
    from training.keras_compat import keras
    from training.models import custom_objects

    with tempfile.TemporaryDirectory() as scratch:
        storage.download(f"{url}/checkpoints/best.h5", f"{scratch}/best.h5")
        model = keras.models.load_model(f"{scratch}/best.h5", custom_objects=custom_objects(), compile=False)
        assert model.output_shape[-1] == 10
    summary = json.loads(storage.read_bytes(f"{url}/report/summary.json"))
    assert summary["epochs_done"] == EPOCHS and summary["best_val_accuracy"] > 0.5, summary
    events = storage.filesystem().find(f"{url[5:]}/tensorboard")
    assert any("tfevents" in key for key in events), events
    index = json.loads(storage.read_bytes(f"{mirror}/runs.json"))
    assert [entry["run"] for entry in index] == [run_dir.name] and index[0]["state"] == "completed"

    # The secret key is nowhere: not in the run directory, the script, the logs or the mirror.
    for path in [p for p in resumed_dir.rglob("*") if p.is_file()]:
        assert SECRET.encode() not in path.read_bytes(), path
    for key in storage.filesystem().find(s3[5:]):
        assert SECRET.encode() not in storage.read_bytes(f"s3://{key}"), key
