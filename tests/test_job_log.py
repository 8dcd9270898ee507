"""What a person reads in a job's log: no TensorFlow start-up chatter unless runtime.verbose,
no GPUs for a job that asked for none, and one result line at the end of a completed run (the
demo run's own output is checked in tests/test_training.py)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from core.config import Config

REPO = Path(__file__).resolve().parent.parent

# Seen on a CPU-only node with TensorFlow 2.21 (a CUDA build), before training/keras_compat.py
# held them back.
CHATTER = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796496238.985795   31887 cudart_stub.cc:31] Could not find cuda drivers on your machine, "
    "GPU will not be used.",
    "E0000 00:00:1796496258.676365   31887 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
    "Failed call to cuInit: UNKNOWN ERROR (303)",
    "I0000 00:00:1796495944.147804   20063 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use "
    "available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the "
    "appropriate compiler flags.",
    "2024-05-01 10:00:00.123456: I tensorflow/core/util/port.cc:153] oneDNN custom operations are on.",
]
KEPT = [
    "[train] 1 replicas over 1 process(es); global batch 64 = 64 per replica",
    "Traceback (most recent call last):",
    "training: error: data.data_dir /x does not exist",
    "22/22 - 44s - loss: 2.0915 - accuracy: 0.2848 - val_accuracy: 0.1278",
]


def chatter_pattern() -> re.Pattern:
    from training.keras_compat import START_UP_CHATTER  # loads TensorFlow

    return START_UP_CHATTER


@pytest.mark.parametrize("line", CHATTER)
def test_start_up_chatter_is_recognised(line):
    assert chatter_pattern().match(line)


@pytest.mark.parametrize("line", KEPT)
def test_everything_else_is_kept(line):
    assert not chatter_pattern().match(line)


def test_loading_tensorflow_says_nothing_unless_asked_and_leaves_garbage_collection_on():
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    code = ("import gc, sys; import training.keras_compat; print('loaded', file=sys.stderr); "
            "print(gc.isenabled(), gc.get_freeze_count())")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stderr == "loaded\n", done.stderr
    # Loading runs with the collector off (training/keras_compat.py); left off, a long run's
    # cyclic garbage would never be freed. What loading made is frozen out of its way.
    enabled, frozen = done.stdout.split()
    assert enabled == "True" and int(frozen) > 100_000, done.stdout


def test_tensorflow_env_is_set_before_it_loads():
    from training.main import tensorflow_env

    cfg = Config()  # slurm.gpus_per_node 0: a CPU-only job
    assert tensorflow_env(cfg, {}) == {"CUDA_VISIBLE_DEVICES": ""}
    assert tensorflow_env(cfg, {"SLURM_GPUS_ON_NODE": "2"}) == {}  # given GPUs anyway: check_start judges
    cfg.slurm.gpus_per_node, cfg.runtime.verbose = 1, True
    assert tensorflow_env(cfg, {}) == {"TF_CPP_MIN_LOG_LEVEL": "0"}


def test_the_result_line_says_how_the_run_ended(tmp_path):
    from training.main import result_line

    summary = {"eval": {"accuracy": 0.96111}, "best_val_accuracy": 0.95, "best_epoch": 5,
               "final_val_accuracy": 0.9583, "target_accuracy": 0.9, "target_reached": True,
               "epochs_done": 5, "epochs_total": 5, "wall_time_s": 312.4}
    assert result_line(summary, tmp_path) == (
        "[train] result: val accuracy best 0.9611 (epoch 5), final 0.9583; target 0.9 reached; 5 of 5 "
        f"epochs in 312 s; report {tmp_path}/report/summary.json")
    summary.update(eval=None, target_reached=False, target_accuracy=0.99)
    assert "best 0.9500 (epoch 5)" in result_line(summary, tmp_path)
    assert "target 0.99 NOT reached" in result_line(summary, tmp_path)
    summary.update(target_accuracy=None)
    assert "no target set (train.target_accuracy)" in result_line(summary, tmp_path)
