"""GPU check: expected counts from hand-written environments, verdicts, one line per process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.config import Config, dump
from training import gpucheck

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("env, flag, configured, expected", [
    ({"SLURM_GPUS_ON_NODE": "2", "CUDA_VISIBLE_DEVICES": "0"}, 4, None, (4, "--expect-gpus")),
    ({"SLURM_GPUS_ON_NODE": "2", "CUDA_VISIBLE_DEVICES": "0"}, None, None, (2, "SLURM_GPUS_ON_NODE")),
    ({"CUDA_VISIBLE_DEVICES": "0,1,2"}, None, 8, (3, "CUDA_VISIBLE_DEVICES")),
    ({"CUDA_VISIBLE_DEVICES": ""}, None, None, (0, "CUDA_VISIBLE_DEVICES")),
    ({"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, None, None, (0, "CUDA_VISIBLE_DEVICES")),
    ({}, None, 2, (2, "slurm.gpus_per_node of the run")),
    ({}, None, None, (None, "")),
])
def test_expected_gpus(env, flag, configured, expected):
    assert gpucheck.expected_gpus(env, flag, configured) == expected


def test_slurm_gpus_that_tensorflow_cannot_see_say_so():
    word, why = gpucheck.verdict(2, "SLURM_GPUS_ON_NODE", 0, cuda_build=True, driver_gpus=None)
    assert word == "NO GPU" and gpucheck.failed(word, 2)
    assert why.startswith("2 GPU(s) allocated by SLURM")
    assert "TensorFlow sees 0" in why and "nvidia-smi" in why


@pytest.mark.parametrize("expected, seen, cuda, driver, word, fails, hint", [
    (2, 2, True, 2, "OK", False, "sees 2 of 2"),
    (2, 1, True, 2, "MISMATCH", True, "the driver lists 2"),
    (1, 0, False, None, "NO GPU", True, "CPU-only build"),
    (None, 0, True, None, "NO GPU", False, "runs on the CPU"),  # nothing expected: not an error
    (0, 0, True, None, "OK", False, "sees 0 of 0"),
    (None, 4, True, 4, "OK", False, "sees 4"),
])
def test_verdicts(expected, seen, cuda, driver, word, fails, hint):
    got, why = gpucheck.verdict(expected, "--expect-gpus", seen, cuda, driver)
    assert (got, gpucheck.failed(got, expected)) == (word, fails)
    assert hint in why


def test_allocation_verdict_counts_nodes():
    ok = "gpucheck node1 rank 0 | GPUs 2 x A100 | verdict OK: TensorFlow sees 2 of 2"
    bad = "gpucheck node2 rank 1 | GPUs 0 | verdict NO GPU: 2 GPU(s) allocated by SLURM but TensorFlow sees 0"
    assert gpucheck.allocation_verdict([ok, ok], 2) == ("OK on all 2 node(s)", True)
    assert gpucheck.allocation_verdict([ok, bad], 2) == ("NO GPU on 1 of 2 node(s)", False)
    text, ok_all = gpucheck.allocation_verdict([ok], 2)
    assert text.startswith("MISSING: 1 of 2") and not ok_all


def test_local_check_prints_one_line_and_writes_json(tmp_path):
    (tmp_path / "config.yaml").write_text(dump(Config()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM") and k != "CUDA_VISIBLE_DEVICES"}
    done = subprocess.run([sys.executable, "-m", "training.gpucheck", "--expect-gpus", "1", "--run-dir",
                           str(tmp_path)], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    lines = done.stdout.splitlines()
    assert len(lines) == 1, done.stdout + done.stderr
    word = gpucheck.parse_verdict(lines[0])
    assert word in gpucheck.VERDICTS and done.returncode == (0 if word == "OK" else 1)
    for part in ("tf ", "tf-keras ", "horovod ", "nccl ", "built for "):
        assert f"| {part}" in lines[0]
    (report,) = (tmp_path / "logs").glob("gpucheck-*.json")
    assert json.loads(report.read_text())["verdict"] == word


@pytest.mark.slurm
def test_submit_checks_every_node_of_a_two_node_allocation(tmp_path, slurm_cluster, capsys):
    cfg = Config()
    cfg.slurm.cpus_per_task = 1
    (tmp_path / "config.yaml").write_text(dump(cfg))
    code = gpucheck.main(["--submit", "--nodes", "2", "--gpus", "2", "--gpu-type", "a100",
                          "--run-dir", str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3, lines
    for node, line in zip(("node1", "node2"), lines):
        # The local cluster's GPUs are stand-ins: SLURM allocates them, TensorFlow finds none.
        assert line.startswith(f"gpucheck {node} ")
        assert "NO GPU: 2 GPU(s) allocated by SLURM" in line and "TensorFlow sees 0" in line
    assert "NO GPU on 2 of 2 node(s)" in lines[2] and code == 1
    assert len(list((tmp_path / "logs").glob("gpucheck-node*-*.json"))) == 2
