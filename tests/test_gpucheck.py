"""GPU check: expected counts from hand-written environments, verdicts, one line per process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.config import Config, dump
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
    cause = gpucheck.likely_cause(True, "12.5.1", {}, None, None, 0)
    word, why = gpucheck.verdict(2, "SLURM_GPUS_ON_NODE", 0, cause)
    assert word == "NO GPU" and gpucheck.failed(word, 2)
    assert why.startswith("2 GPU(s) allocated by SLURM")
    assert "TensorFlow sees 0" in why and "nvidia-smi" in why


@pytest.mark.parametrize("expected, seen, word, fails, hint", [
    (2, 2, "OK", False, "sees 2 of 2"),
    (2, 1, "MISMATCH", True, "sees 1"),
    (1, 0, "NO GPU", True, "sees 0"),
    (None, 0, "NO GPU", False, "runs on the CPU"),  # nothing expected: not an error
    (0, 0, "OK", False, "sees 0 of 0"),
    (None, 4, "OK", False, "sees 4"),
])
def test_verdicts(expected, seen, word, fails, hint):
    got, why = gpucheck.verdict(expected, "--expect-gpus", seen)
    assert (got, gpucheck.failed(got, expected)) == (word, fails)
    assert hint in why


CU12_WHEELS = {"nvidia-cudnn-cu12": "9.28.0.42", "nvidia-cuda-runtime-cu12": "12.5.82"}


@pytest.mark.parametrize("cuda_build, cuda, wheels, driver, driver_gpus, seen, says", [
    # What a user with each broken install reads, and the fix it names.
    (False, None, {}, "580.65.06", 4, 0, "CPU-only build: install the gpu extra"),
    (True, "12.5.1", {}, None, None, 0, "no NVIDIA driver"),
    (True, "12.5.1", CU12_WHEELS, "470.82.01", 4, 0, "driver 470.82.01 is older than CUDA 12.5.1 needs"),
    (True, "12.5.1", {}, "580.65.06", 4, 0, "no nvidia-*-cu12 wheels): install the gpu extra"),
    (True, "12.5.1", {"nvidia-cudnn-cu13": "9.1"}, "580.65.06", 4, 0, "install the gpu extra"),
    (True, "12.5.1", CU12_WHEELS, "580.65.06", 4, 2, "the driver lists 4"),
    (True, "12.5.1", CU12_WHEELS, "525.60.13", 4, 4, ""),  # the oldest driver CUDA 12 runs on
])
def test_likely_cause_names_the_fix(cuda_build, cuda, wheels, driver, driver_gpus, seen, says):
    cause = gpucheck.likely_cause(cuda_build, cuda, wheels, driver, driver_gpus, seen)
    assert (says in cause) if says else cause == ""


def test_trainer_refuses_to_train_on_cpu_when_slurm_gave_gpus(tmp_path):
    (tmp_path / "config.yaml").write_text(dump(Config()))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "LAUNCH_"))}
    env.update(SLURM_GPUS_ON_NODE="2", CUDA_VISIBLE_DEVICES="0,1")
    done = subprocess.run([sys.executable, "-m", "training.main", "--run-dir", str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    errors = [line for line in done.stderr.splitlines() if line.startswith("training: error:")]
    assert done.returncode == 1 and len(errors) == 1, done.stderr[-2000:]
    assert "2 GPU(s) allocated by SLURM" in errors[0] and "TensorFlow sees 0" in errors[0]
    assert "runtime.allow_cpu=true" in errors[0]
    assert not (tmp_path / "checkpoints").exists()  # nothing trained


def test_allow_cpu_turns_the_refusal_into_a_warning(capsys):
    env = {"SLURM_GPUS_ON_NODE": "1", "CUDA_VISIBLE_DEVICES": "0"}
    with pytest.raises(gpucheck.NoGPUError):
        gpucheck.check_start(False, env)
    gpucheck.check_start(True, env)
    gpucheck.check_start(False, {**env, "LAUNCH_ALLOW_CPU": "1"})
    assert capsys.readouterr().out.count("training anyway (runtime.allow_cpu)") == 2
    gpucheck.check_start(False, {})  # no GPUs asked for: nothing to check


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
    for part in ("tf ", "tf-keras ", "horovod ", "nccl ", "built for ", "driver ", "wheels "):
        assert f"| {part}" in lines[0]
    (report,) = (tmp_path / "logs").glob("gpucheck-*.json")
    facts = json.loads(report.read_text())
    assert facts["verdict"] == word
    assert facts["python"] == sys.executable  # in a container, the image's interpreter instead


@pytest.mark.slurm
def test_launch_gpucheck_checks_every_node_of_a_two_node_allocation(tmp_path, slurm_cluster, launch_cli):
    cfg = Config()
    cfg.slurm.cpus_per_task = 1
    (tmp_path / "config.yaml").write_text(dump(cfg))
    done = launch_cli("gpucheck", "--nodes", "2", "--gpus", "2", "--gpu-type", "a100", "--run-dir", tmp_path,
                      timeout=600)
    submitted, logged, *lines = done.stdout.splitlines()
    assert submitted.startswith("submitted job ") and "gpucheck on 2 node(s), 2 GPU(s) per node" in submitted
    assert len(lines) == 3, done.stdout + done.stderr
    for node, line in zip(("node1", "node2"), lines):
        # The local cluster's GPUs are stand-ins: SLURM allocates them, TensorFlow finds none.
        assert line.startswith(f"gpucheck {node} ")
        assert "NO GPU: 2 GPU(s) allocated by SLURM" in line and "TensorFlow sees 0" in line
    assert "NO GPU on 2 of 2 node(s)" in lines[2] and done.returncode == 1
    assert len(list((tmp_path / "logs").glob("gpucheck-node*-*.json"))) == 2


def test_the_compute_side_submits_nothing():
    """`python -m training.gpucheck` checks where it runs; the old --submit is gone."""
    done = subprocess.run([sys.executable, "-m", "training.gpucheck", "--submit"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unrecognized arguments: --submit" in done.stderr


@pytest.mark.parametrize("gpus_per_node, env, hidden", [
    (0, {}, True),  # a CPU-only job: TensorFlow gets none of the node's GPUs, and no cuInit
    (0, {"SLURM_GPUS_ON_NODE": "0"}, True),
    (0, {"SLURM_GPUS_ON_NODE": "2"}, False),  # SLURM gave GPUs all the same: check_start judges
    (0, {"SLURM_JOB_GPUS": "0,1"}, False),
    (2, {}, False),
])
def test_a_job_that_asked_for_no_gpus_hides_them(gpus_per_node, env, hidden):
    assert gpucheck.hide_gpus(gpus_per_node, env) is hidden
    if hidden:  # the start check then expects none: nothing to refuse
        assert gpucheck.expected_gpus({**env, "CUDA_VISIBLE_DEVICES": ""})[0] == 0
        gpucheck.check_start(False, {**env, "CUDA_VISIBLE_DEVICES": ""})


def test_the_allow_cpu_warning_is_one_line_per_node(capsys):
    env = {"SLURM_GPUS_ON_NODE": "1", "CUDA_VISIBLE_DEVICES": "0"}
    for local_rank in ("0", "1", "2", "3"):  # four ranks of one node, as Horovod runs them
        gpucheck.check_start(True, {**env, "SLURM_LOCALID": local_rank})
    assert capsys.readouterr().out.count("training anyway (runtime.allow_cpu)") == 1
