"""Job steps run inside the test image through Pyxis on the local cluster: a hand-written step,
and `launch gpucheck` with container.image.

Needs ``slurm/containers/build_pyxis.sh`` and ``slurm/containers/build_image.sh`` (both run by
``tests/install_and_run.sh``) and the cluster started: ``slurm/local_cluster.sh start``.
"""

import importlib.metadata
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from core.config import Config, dump
from slurm_jobs import pyxis_containers, wait_final

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parent.parent
IMAGE = REPO / "build" / "containers" / "test-image.sqsh"
BUILD_HINT = "build it with slurm/containers/build_pyxis.sh and slurm/containers/build_image.sh"

# Each task reports what it sees, as one JSON file per task in the mounted host folder. The
# TensorFlow release is read from its installed metadata (the image's CPU build,
# slurm/containers/build_image.sh): importing it through FUSE takes most of a minute on a loaded
# machine, and the gpucheck test below and the training jobs in the image
# (tests/test_container_train_slurm.py) import it.
TASK = """
import importlib.metadata, json, os, sys
facts = {
    "node": os.environ["SLURMD_NODENAME"],
    "marker": open("/opt/launch-test-image").readline().strip(),
    "python": sys.executable,
    "tensorflow": importlib.metadata.version("tensorflow-cpu"),
    "host_input": open("/data/input.txt").read(),
}
json.dump(facts, open("/data/task-%s.json" % os.environ["SLURM_PROCID"], "w"))
"""


@pytest.fixture(scope="module")
def image(slurm_cluster):
    """The test image, with Pyxis loaded by srun. Fails, never skips: CI builds both."""
    if not IMAGE.is_file():
        pytest.fail(f"no container image at {IMAGE}; {BUILD_HINT}")
    srun_help = subprocess.run(["srun", "--help"], capture_output=True, text=True).stdout
    if "--container-image" not in srun_help:
        pytest.fail(f"srun has no --container-image, so Pyxis is not loaded; {BUILD_HINT}")
    return IMAGE


def test_two_node_step_runs_in_the_image_and_writes_through_a_mount(image, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "input.txt").write_text("written on the host")
    step = (f"srun --container-image={shlex.quote(str(image))}"
            f" --container-mounts={shlex.quote(str(shared))}:/data python3 -c {shlex.quote(TASK)}")
    submitted = subprocess.run(
        ["sbatch", "--parsable", "--nodes=2", "--ntasks-per-node=1",
         f"--output={tmp_path / 'slurm-%j.out'}", "--wrap", step],
        capture_output=True, text=True, timeout=60)
    assert submitted.returncode == 0, submitted.stderr
    state = wait_final(submitted.stdout.strip(), timeout_s=600)
    logs = "".join(p.read_text() for p in tmp_path.glob("slurm-*.out"))
    assert state == "COMPLETED", logs

    tasks = [json.loads((shared / f"task-{rank}.json").read_text()) for rank in (0, 1)]
    assert sorted(t["node"] for t in tasks) == ["node1", "node2"], tasks
    for facts in tasks:
        # The image's files, Python and TensorFlow (the host's release), not the host's.
        assert facts["marker"] == "suite bookworm", facts
        assert facts["python"] == "/usr/bin/python3", facts
        assert facts["tensorflow"] == importlib.metadata.version("tensorflow"), facts
        assert facts["host_input"] == "written on the host", facts


def test_launch_gpucheck_runs_inside_the_image(image, tmp_path, launch_cli):
    cfg = Config()
    cfg.slurm.cpus_per_task = 1
    (tmp_path / "config.yaml").write_text(dump(cfg))
    done = launch_cli("gpucheck", "--gpus", "0", "--run-dir", tmp_path, f"container.image={image}", timeout=600)
    said = done.stdout + done.stderr
    assert done.returncode == 0, said
    submitted, _, line, verdict = done.stdout.splitlines()
    job_id = re.match(r"submitted job (\d+): gpucheck on 1 node\(s\)", submitted).group(1)
    assert re.match(r"gpucheck node[12] rank 0 \| .*\| verdict OK: ", line), said
    assert verdict.startswith(f"gpucheck job {job_id} on 1 node(s), 0 GPU(s) each: OK on all 1 node(s)"), said
    assert wait_final(job_id, timeout_s=60) == "COMPLETED", said
    assert pyxis_containers(job_id) == [], "the job left its unpacked image on the node"
    # The image's interpreter ran the check: on the host, the job would run launch's own (sys.executable).
    (report,) = (tmp_path / "logs").glob("gpucheck-*.json")
    facts = json.loads(report.read_text())
    assert sys.executable != "/usr/bin/python3", "the host's interpreter must differ from the image's"
    assert facts["python"] == "/usr/bin/python3", facts
    assert facts["tensorflow"] == importlib.metadata.version("tensorflow"), facts
