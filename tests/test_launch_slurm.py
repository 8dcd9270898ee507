"""`launch` against the real local two-node cluster (slurm/local_cluster.sh start).

Jobs here run the real `python -m training.main`; tests whose subject is not training pass
train.epochs=1 to stay short.
"""
from __future__ import annotations

import csv
import json
import re
import subprocess
from pathlib import Path

import pytest

from core.config import BACKENDS, GPU_STYLES, load_config
from launcher.render import tasks_per_node
from slurm_jobs import wait_final

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted((REPO / "configs").glob("*.yaml"))
LOCAL_GPUS, LOCAL_CPUS = 2, 2  # per node on the local cluster


def wait_for_job(job_id: str, run_dir: Path, timeout_s: float) -> None:
    """Waits until the job ends (scontrol: accounting is off) and fails with its logs unless it
    COMPLETED."""
    state = wait_final(job_id, timeout_s)
    if state != "COMPLETED":
        logs = "".join(f"\n--- {p.name} (tail)\n" + "\n".join(p.read_text().splitlines()[-15:])
                       for p in sorted((run_dir / "logs").glob(f"slurm-{job_id}.*")))
        pytest.fail(f"job {job_id} ended {state}, not COMPLETED{logs}")


def submitted(done: subprocess.CompletedProcess, run_root: Path) -> tuple[str, Path]:
    assert done.returncode == 0, done.stderr
    job_id = re.search(r"^submitted job (\d+)", done.stdout, re.M).group(1)
    (run_dir,) = run_root.iterdir()
    assert f"run dir:     {run_dir}" in done.stdout
    return job_id, run_dir


def check_job_results(run_dir: Path, nodes: set[str]) -> None:
    """What a finished multi-node run must show. The one place to extend with training results.

    The suite's one multiworker run through launch that checks them is the preemption test's
    (tests/test_preemption.py): it also kills a worker and requeues the job twice."""
    reports = [json.loads(p.read_text()) for p in sorted((run_dir / "logs").glob("env-*.json"))]
    assert {r["SLURMD_NODENAME"] for r in reports} == nodes, reports
    assert sorted(r["SLURM_PROCID"] for r in reports) == [str(i) for i in range(len(nodes))]
    # The demo trained to the bar across the nodes, and the replicas stayed identical.
    with open(run_dir / "history.csv") as fh:
        last = list(csv.DictReader(fh))[-1]
    assert float(last["val_accuracy"]) >= 0.90, last
    ranks = [json.loads(p.read_text()) for p in sorted((run_dir / "logs").glob("rank-*.json"))]
    assert {r["node"] for r in ranks} == nodes
    assert len({r["trainable_weights_sha256"] for r in ranks}) == 1
    summary = json.loads((run_dir / "report" / "summary.json").read_text())
    assert summary["eval"]["accuracy"] >= 0.90 and summary["backend"] == "multiworker"


def test_unavailable_gpu_type_is_one_line_with_slurms_reason(slurm_cluster, launch_cli, run_root):
    # --no-preflight: preflight refuses this before sbatch (tests/test_preflight.py); this test is
    # about what reaches the user when SLURM itself refuses.
    done = launch_cli("--nodes", "2", "--gpus", "2", "--gpu-type", "v100", "--backend",
                      "multiworker", "--run-root", run_root, "--no-preflight")
    assert done.returncode != 0
    assert done.stderr.count("\n") == 1, done.stderr
    line = done.stderr
    assert line.startswith("launch: error: sbatch: error: Batch job submission failed: "
                           "Requested node configuration is not available"), line
    assert "--gres=gpu:v100:2" in line and "on 2 nodes" in line and 'sinfo -o "%N %G %f"' in line
    assert list(run_root.iterdir()) == [], "a refused launch left a run directory behind"


def test_refused_resume_keeps_the_run_as_it_was(slurm_cluster, launch_cli, run_root, tmp_path):
    assert launch_cli("--emit-sbatch", tmp_path / "a.sbatch", "--run-root", run_root).returncode == 0
    (run_dir,) = run_root.iterdir()
    before = {p.name: p.read_text() for p in run_dir.iterdir() if p.is_file()}
    done = launch_cli("--resume", run_dir, "--gpus", "2", "--gpu-type", "v100", "--no-preflight")
    assert done.returncode != 0 and "Requested node configuration is not available" in done.stderr
    assert {p.name: p.read_text() for p in run_dir.iterdir() if p.is_file()} == before


def fit_local_cluster(config: Path, backend: str | None = None) -> list[str]:
    """Flags that shrink a config's request to what the local cluster has."""
    cfg = load_config(config, [], {"runtime.backend": backend})
    flags = ["slurm.mem=", "slurm.partition=", "slurm.account=", "slurm.qos="]
    if cfg.slurm.gpus_per_node:
        flags += ["--gpus", str(LOCAL_GPUS), "--gpu-type", "a100"]
        cfg.slurm.gpus_per_node = LOCAL_GPUS
    if cfg.slurm.nodes > 2:
        flags += ["--nodes", "2"]
    per_node = tasks_per_node(cfg.slurm, cfg.runtime.backend)
    return flags + [f"slurm.cpus_per_task={min(cfg.slurm.cpus_per_task, LOCAL_CPUS // per_node)}"]


def sbatch_test_only(launch_cli, tmp_path: Path, *args: object) -> None:
    done = launch_cli(*args, "--dry-run", "--run-root", tmp_path / "runs")
    assert done.returncode == 0, done.stderr
    script = tmp_path / "job.sbatch"
    script.write_text(done.stdout)
    checked = subprocess.run(["sbatch", "--test-only", str(script)], capture_output=True, text=True,
                             cwd=tmp_path, timeout=30)
    assert checked.returncode == 0, f"sbatch --test-only refused:\n{checked.stderr}\n{done.stdout}"
    assert re.search(r"Job \d+ to start at", checked.stderr), checked.stderr


@pytest.mark.parametrize("config", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_config_passes_sbatch_test_only(slurm_cluster, launch_cli, tmp_path, config):
    sbatch_test_only(launch_cli, tmp_path, "--config", config, *fit_local_cluster(config))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("style", GPU_STYLES)
def test_every_gpu_style_and_backend_passes_sbatch_test_only(slurm_cluster, launch_cli, tmp_path,
                                                            style, backend):
    cpus = LOCAL_CPUS // (LOCAL_GPUS if backend == "horovod" else 1)
    sbatch_test_only(launch_cli, tmp_path, "--backend", backend, "--nodes",
                     1 if backend == "mirrored" else 2, "--gpus", LOCAL_GPUS, "--gpu-type", "a100",
                     "--gpu-style", style, "--job-name", "it's a \"test\" $(x)",
                     f"slurm.cpus_per_task={cpus}")


def test_hostile_job_name_and_run_root_survive_real_sbatch(slurm_cluster, launch_cli, tmp_path):
    marker = tmp_path / "pwned"
    name = f"x'; touch {marker}; echo '"
    run_root = tmp_path / "runs with 'quotes' $(and) 50%"
    done = launch_cli("--job-name", name, "--run-root", run_root, "train.epochs=1")
    job_id, run_dir = submitted(done, run_root)
    seen = subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%j"],
                          capture_output=True, text=True).stdout.strip()
    assert seen == name
    wait_for_job(job_id, run_dir, timeout_s=10 * 60)
    assert (run_dir / "logs" / f"slurm-{job_id}.out").is_file()  # %-escaped path landed right
    assert json.loads((run_dir / "logs" / "env-0.json").read_text())["SLURM_JOB_ID"] == job_id
    assert not marker.exists()
