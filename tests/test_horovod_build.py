"""The project's Horovod build (training/horovod_build/build.sh): what it reports and that it trains.

These fail, never skip, when Horovod is missing: CI builds it first.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TINY_FIT = REPO / "tests" / "helpers" / "hvd_tiny_fit.py"
BUILD_HINT = "build it with training/horovod_build/build.sh"

pytestmark = [pytest.mark.horovod, pytest.mark.xdist_group("horovod-build")]  # one worker: its module fixture once


def quiet_env() -> dict[str, str]:
    """This environment, with the repository importable and TensorFlow's log noise down."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


@pytest.fixture(scope="module")
def horovodrun() -> str:
    """Path of horovodrun, once the TensorFlow extension imports; fails with the build hint."""
    path = shutil.which("horovodrun")
    if path is None:
        pytest.fail(f"horovodrun is not on PATH: Horovod is not installed; {BUILD_HINT}")
    probe = subprocess.run([sys.executable, "-c", "import horovod.tensorflow.keras"], env=quiet_env(),
                           capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.fail(f"horovod.tensorflow.keras does not import ({last}); {BUILD_HINT}")
    return path


def checked(output: str) -> dict[str, bool]:
    """`[X] Name` / `[ ] Name` lines of --check-build, per section: {"Frameworks/TensorFlow": True}."""
    marks, section = {}, ""
    for line in output.splitlines():
        if line.strip().endswith(":"):
            section = line.strip().rstrip(":").replace("Available ", "")
        match = re.match(r"\s*\[(X| )\]\s+(\S+)", line)
        if match:
            marks[f"{section}/{match.group(2)}"] = match.group(1) == "X"
    return marks


def test_check_build_reports_tensorflow_gloo_and_mpi(horovodrun):
    out = subprocess.run([horovodrun, "--check-build"], env=quiet_env(), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Horovod v0.28.1" in out.stdout
    marks = checked(out.stdout)
    expected = {
        "Frameworks/TensorFlow": True,
        # Built with HOROVOD_WITHOUT_PYTORCH=1; the patch stops --check-build claiming otherwise.
        "Frameworks/PyTorch": False,
        "Controllers/MPI": True,
        "Controllers/Gloo": True,
        "Tensor Operations/MPI": True,
        "Tensor Operations/Gloo": True,
    }
    assert {key: marks.get(key) for key in expected} == expected, out.stdout


def run_tiny_fit(horovodrun: str, controller: str, out_dir: Path) -> list[dict]:
    """Runs the tiny fit on 2 ranks under horovodrun --gloo or --mpi; returns each rank's result."""
    command = [horovodrun, f"--{controller}", "-np", "2", sys.executable, str(TINY_FIT), str(out_dir)]
    done = subprocess.run(command, cwd=REPO, env=quiet_env(), capture_output=True, text=True,
                          timeout=420)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return [json.loads((out_dir / f"rank{rank}.json").read_text()) for rank in range(2)]


@pytest.mark.slow
@pytest.mark.parametrize("controller", ["gloo", "mpi"])
def test_two_rank_fit_ends_with_identical_weights(horovodrun, controller, tmp_path):
    first, second = run_tiny_fit(horovodrun, controller, tmp_path)

    assert [r["rank"] for r in (first, second)] == [0, 1]
    for result in (first, second):
        assert (result["size"], result["local_size"]) == (2, 2)
        assert result["local_rank"] == result["rank"]
        # The script scales the base rate 0.05 by hvd.size(); the wrapper keeps the optimizer's class.
        assert result["learning_rate"] == pytest.approx(0.1)
        assert result["optimizer_class"] == "SGD"
    # Different start, different shards, same end: the broadcast and the gradient allreduce both ran.
    assert first["initial_kernel_sum"] != second["initial_kernel_sum"]
    assert first["weights"] == second["weights"]
    # MetricAverageCallback: each rank's epoch loss is the mean over ranks, so they agree.
    assert first["final_loss"] == pytest.approx(second["final_loss"], rel=1e-6)
    # And it learned: the loss at least halves and the separable problem is nearly solved.
    assert first["final_loss"] < first["first_loss"] / 2
    assert first["final_accuracy"] >= 0.9
