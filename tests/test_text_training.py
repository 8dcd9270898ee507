"""The sentiment demo end to end: real human-written snippets to >= 70% validation accuracy,
a summary with the seed's text fields, predict on obvious sentences, and the same run as a real
two-node Horovod job on SLURM with its shards in a bucket and its run mirrored to one, requeued,
which keeps its vocabulary."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from core import storage
from s3_server import s3, s3_endpoint  # noqa: F401 (fixtures)
from slurm_jobs import ONE_CPU, epochs_done, history_epochs, job_field, trainers_held, wait, wait_final

REPO = Path(__file__).resolve().parent.parent
CONFIG = str(REPO / "configs" / "sentiment_demo.yaml")
BAR = 0.70
EPOCHS = 1  # the shipped demo runs 2; 1 already clears the bar (0.79 measured) and saves CI time
# The demo's data and tokenizer with a lighter GRU than the shipped bidirectional one over 48
# tokens: one direction of 32 units over 32 tokens, 6 s per epoch on 2 idle cores against 8 s with
# 64 units, and still over the bar after one epoch (0.78; measured 2026-12-06). The
# bidirectional path is tests/test_text.py's.
LIGHT = ("text.bidirectional=false", "text.sequence_length=32", "text.hidden_dim=32", "text.embedding_dim=32")
SEED_FIELDS = {"task_type", "accuracy", "model_parameters", "tokenizer_path", "model_path", "plot_path",
               "classes", "created"}
PARAMETERS = {"model_name", "input_dim", "embedding_dim", "hidden_dim", "output_dim", "number_of_layers",
              "bidirectional", "dropout", "pad_index"}

pytestmark = pytest.mark.slow


def launch(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "launcher.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)
    assert done.returncode == 0, f"launch failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def check_summary(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "report" / "summary.json").read_text())
    assert SEED_FIELDS <= set(summary) and summary["task_type"] == "text"
    assert set(summary["model_parameters"]) == PARAMETERS
    assert summary["model_parameters"]["input_dim"] == 12000 and summary["model_parameters"]["output_dim"] == 2
    assert summary["classes"] == {"0": "neg", "1": "pos"}
    assert summary["accuracy"] >= BAR, summary["accuracy"]
    for key in ("tokenizer_path", "model_path", "plot_path"):
        assert (run_dir / summary[key]).is_file(), key
    return summary


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sentiment_demo_trains_and_predicts(tmp_path):
    launch("--config", CONFIG, "--cluster", "local", "--run-root", str(tmp_path), f"train.epochs={EPOCHS}", *LIGHT)
    (run_dir,) = tmp_path.iterdir()
    check_summary(run_dir)
    page = (run_dir / "report" / "texts.html").read_text()
    assert "Most confident correct predictions" in page and "Most confident mistakes" in page

    obvious = {"a tedious, overlong mess": "neg", "dull, boring and badly acted": "neg",
               "a wonderful, moving film with brilliant performances": "pos", "funny, touching and beautifully made": "pos"}
    args = [a for text in obvious for a in ("--text", text)]
    done = subprocess.run([sys.executable, "-m", "training.predict_text", "--run-dir", str(run_dir), *args],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr
    labels = {row["text"]: row["predicted_class"] for row in csv.DictReader(io.StringIO(done.stdout))}
    assert labels == obvious

    done = subprocess.run([sys.executable, "-m", "training.evaluate", "eval", "--run-dir", str(run_dir)],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr
    record = json.loads((run_dir / "report" / "eval-val.json").read_text())
    assert record["accuracy"] >= BAR and record["examples"] == 1835
    # A restarted run reloads its vocabulary: the two-node job below, requeued, proves it.


def check_two_node_run(run_dir: Path, backend: str) -> dict:
    summary = check_summary(run_dir)
    assert summary["backend"] == backend and summary["nodes"] == 2
    shards = [json.loads((run_dir / "logs" / f"rank-{r}.json").read_text())["train_shards"] for r in (0, 1)]
    assert shards[0] and shards[1] and not set(shards[0]) & set(shards[1])  # each worker its own shards
    return summary


def submit(tmp_path: Path, *args: str) -> tuple[str, Path]:
    done = launch("--config", CONFIG, "--run-root", str(tmp_path), "--nodes", "2", ONE_CPU, *LIGHT,
                  *args)
    (run_dir,) = tmp_path.iterdir()
    return re.search(r"^submitted job (\d+)", done.stdout, re.M).group(1), run_dir


@pytest.mark.slurm
@pytest.mark.horovod
def test_sentiment_demo_from_a_bucket_as_a_two_node_horovod_job_requeued_keeps_its_vocabulary(
        slurm_cluster, s3, tmp_path):
    # Horovod: the host's only Horovod run through launch (the image's is
    # tests/test_container_train_slurm.py's); two-node MultiWorkerMirrored runs of the same
    # trainer are tests/test_preemption.py's and the chaos test's. The shards are read from a
    # bucket (staged on each node, at each start) and the run is mirrored to one, tokenizer included.
    from training.data.demo import cache_root
    from training.data.sentiment_demo import prepare_sentiment_demo

    for path in (p for p in prepare_sentiment_demo(cache_root()).iterdir() if p.is_file()):
        storage.upload(str(path), f"{s3}/sentiment/{path.name}")
    mirror = f"{s3}/runs"
    job_id, run_dir = submit(tmp_path, "--backend", "horovod", f"train.epochs={EPOCHS + 1}", "data.source=tfrecord",
                             f"data.data_dir={s3}/sentiment", f"storage.mirror={mirror}")
    wait(lambda: epochs_done(run_dir) >= 1, job_id, 6 * 60, "epoch 1")
    vocabulary = run_dir / "model" / "tokenizer.json"
    before = sha256(vocabulary), vocabulary.stat().st_mtime_ns
    with trainers_held(run_dir, job_id):
        subprocess.run(["scontrol", "requeue", job_id], check=True)
    wait(lambda: job_field(job_id, "Restarts") == "1", job_id, 60, "the requeue")
    assert wait_final(job_id, 9 * 60) == "COMPLETED", (run_dir / "logs" / f"slurm-{job_id}.err").read_text()[-3000:]
    summary = check_two_node_run(run_dir, "horovod")
    # Loaded, not adapted and written again (adapting is deterministic, so the hash alone would not tell).
    assert (sha256(vocabulary), vocabulary.stat().st_mtime_ns) == before
    assert history_epochs(run_dir) == list(range(1, EPOCHS + 2))  # each epoch once

    url = f"{mirror}/{run_dir.name}"
    mirrored = json.loads(storage.read_bytes(f"{url}/report/summary.json"))
    assert (mirrored["task_type"], mirrored["accuracy"]) == ("text", summary["accuracy"]), mirrored
    assert storage.read_bytes(f"{url}/{summary['tokenizer_path']}") == vocabulary.read_bytes()
    assert storage.is_file(f"{url}/checkpoints/best.h5")
    index = json.loads(storage.read_bytes(f"{mirror}/runs.json"))
    assert [(e["run"], e["task_type"], e["state"]) for e in index] == [(run_dir.name, "text", "completed")]
