"""The local two-node cluster behaves like the GPU sites the launcher targets.

Needs the cluster started beforehand: ``slurm/local_cluster.sh start``.
"""

import shlex
import subprocess
import time

import pytest

from slurm_jobs import node_is_up

pytestmark = pytest.mark.slurm

NODES = ("node1", "node2")
START_HINT = "start it with slurm/local_cluster.sh start"


def _run(args, timeout=60):
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        pytest.fail(f"{args[0]} is not installed; {START_HINT}")


@pytest.fixture(autouse=True)
def cluster_reachable():
    result = _run(["sinfo", "-h"])
    if result.returncode != 0:
        pytest.fail(f"local SLURM cluster not reachable ({result.stderr.strip()}); {START_HINT}")


def _node_lines():
    """Returns {node: (state, gres)} as sinfo reports them."""
    out = _run(["sinfo", "-h", "-N", "-o", "%N %T %G"]).stdout
    return {name: (state, gres) for name, state, gres in (line.split() for line in out.splitlines())}


def test_both_nodes_up_with_two_a100():
    # Up, possibly running another test's job (the suite runs tests side by side).
    nodes = _node_lines()
    assert {n: gres for n, (_, gres) in nodes.items()} == {n: "gpu:a100:2" for n in NODES}, f"sinfo -N shows {nodes}"
    assert all(node_is_up(state) for state, _ in nodes.values()), f"sinfo -N shows {nodes}"


def test_two_node_job_runs_one_task_per_node_with_both_gpus(tmp_path):
    out = tmp_path / "slurm-%j.out"
    task = "echo $SLURMD_NODENAME $SLURM_PROCID $CUDA_VISIBLE_DEVICES"
    result = _run(
        ["sbatch", "--wait", "--nodes=2", "--ntasks-per-node=1", "--gres=gpu:a100:2",
         f"--output={out}", "--wrap", f"srun sh -c {shlex.quote(task)}"],
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    (log,) = tmp_path.glob("slurm-*.out")
    tasks = sorted(line.split() for line in log.read_text().splitlines())
    assert tasks == [["node1", "0", "0,1"], ["node2", "1", "0,1"]], log.read_text()


@pytest.mark.parametrize(
    "request_style",
    [["--gres=gpu:a100:2"], ["--gpus-per-node=a100:2"], ["--gpus-per-node=2", "--constraint=a100"]],
    ids=["gres", "gpus-per-node-typed", "gpus-per-node-constraint"],
)
def test_every_gpu_request_style_is_accepted(request_style):
    result = _run(["sbatch", "--test-only", "--nodes=2", *request_style, "--wrap", "true"])
    assert result.returncode == 0 and "node[1-2]" in result.stderr, result.stderr


def test_unknown_gpu_type_is_refused_at_submission():
    result = _run(["sbatch", "--test-only", "--gres=gpu:v100:1", "--wrap", "true"])
    assert result.returncode != 0
    assert "Requested node configuration is not available" in result.stderr, result.stderr
