"""`launch` refuses at once what a job would only fail on after the queue (launcher/preflight.py).

Each refusal runs the real `launch` against the local cluster and checks what a user sees: one
line that names the key or path, nothing in the queue, no run directory.
"""
from __future__ import annotations

import contextlib
import json
import re
import subprocess
import uuid
from pathlib import Path

import pytest

from launcher import preflight
from core.config import SlurmConfig

pytestmark = pytest.mark.slurm


def queued(name: str) -> list[str]:
    """Ids of queued or running jobs called `name`."""
    out = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i"], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    return out.split()


@pytest.fixture
def refused(slurm_cluster, launch_cli, run_root):
    """Runs `launch ARGS` to submit and returns its one error line, after checking that nothing
    was queued and no run directory was made."""

    def run(*args: object) -> str:
        name = f"preflight-{uuid.uuid4().hex[:8]}"  # other sessions' jobs may come and go meanwhile
        done = launch_cli("--run-root", run_root, "--job-name", name, *args)
        assert done.returncode != 0, done.stdout
        assert done.stderr.count("\n") == 1 and done.stderr.startswith("launch: error: "), done.stderr
        assert queued(name) == [], "a refused launch submitted a job"
        assert not run_root.exists() or list(run_root.iterdir()) == [], "a refused launch left a run dir"
        return done.stderr

    return run


def write_shards(folder: Path, sizes: dict[str, int], manifest: dict[str, int] | None = None) -> Path:
    """Shard files of the given byte sizes (content is not read by preflight) and a labels.json
    with the converter's manifest of `manifest` (name -> bytes; None: no manifest)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, size in sizes.items():
        (folder / name).write_bytes(b"\0" * size)
    labels = {"classes": ["a", "b", "c"], "counts": {"train": 36, "validation": 9}, "label_offset": 0}
    if manifest is not None:
        labels["shards"] = {name: {"bytes": size, "records": 18} for name, size in manifest.items()}
    (folder / "labels.json").write_text(json.dumps(labels))
    return folder


GOOD = {"train-00000-of-00002": 300, "train-00001-of-00002": 200, "validation-00000-of-00001": 100}


def tfrecord(folder: Path) -> list[str]:
    return ["data.source=tfrecord", f"data.data_dir={folder}"]


def test_good_shards_pass_and_dry_run_prints_the_script(launch_cli, slurm_cluster, tmp_path, run_root):
    shards = write_shards(tmp_path / "shards", GOOD, GOOD)
    done = launch_cli("--dry-run", "--run-root", run_root, *tfrecord(shards))
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.startswith("#!/bin/bash\n")


def test_missing_data_dir(refused, tmp_path):
    missing = tmp_path / "no such data"
    err = refused(*tfrecord(missing))
    assert f"data.data_dir {missing} does not exist" in err


def test_empty_shard_set(refused, tmp_path):
    shards = write_shards(tmp_path / "shards", {})
    err = refused(*tfrecord(shards))
    assert f"no TFRecord shards named train-* in {shards}" in err and "data.train_split" in err


def test_missing_validation_shards_name_the_val_split(refused, tmp_path):
    shards = write_shards(tmp_path / "shards", {"train-00000-of-00001": 10})
    assert "no TFRecord shards named validation-*" in refused(*tfrecord(shards), "data.num_classes=3")


def test_zero_byte_shard(refused, tmp_path):
    shards = write_shards(tmp_path / "shards", {**GOOD, "train-00001-of-00002": 0})
    assert f"{shards / 'train-00001-of-00002'} is empty (0 bytes)" in refused(*tfrecord(shards))


def test_shard_missing_from_the_manifest_count(refused, tmp_path):
    on_disk = {k: v for k, v in GOOD.items() if k != "train-00001-of-00002"}
    shards = write_shards(tmp_path / "shards", on_disk, GOOD)
    err = refused(*tfrecord(shards))
    assert f"{shards / 'train-00001-of-00002'} is missing" in err and "lists 2 train shards, 1 are there" in err


def test_shard_not_in_the_manifest(refused, tmp_path):
    shards = write_shards(tmp_path / "shards", {**GOOD, "validation-00001-of-00001": 5}, GOOD)
    assert f"{shards / 'validation-00001-of-00001'} is not in the manifest" in refused(*tfrecord(shards))


def test_truncated_shard_does_not_match_the_manifest_size(refused, tmp_path):
    shards = write_shards(tmp_path / "shards", {**GOOD, "train-00000-of-00002": 120}, GOOD)
    err = refused(*tfrecord(shards))
    assert f"{shards / 'train-00000-of-00002'} is 120 bytes but {shards / 'labels.json'} records 300" in err


def test_num_classes_that_disagrees_with_labels_json(refused, tmp_path):
    shards = write_shards(tmp_path / "shards", GOOD, GOOD)
    assert "data.num_classes is 5 but" in refused(*tfrecord(shards), "data.num_classes=5")


def test_class_folders_that_disagree_with_num_classes(refused, tmp_path):
    for split, name in [("train", "cat"), ("train", "dog"), ("val", "cat")]:
        (tmp_path / "images" / split / name).mkdir(parents=True)
    err = refused("data.source=folder", f"data.data_dir={tmp_path / 'images'}", "data.num_classes=3")
    assert "data.num_classes is 3 but" in err and "has 2 class folders" in err


@pytest.mark.parametrize("override, says", [
    ("optimizer.lr=0", "optimizer.lr in override 'optimizer.lr=0': 0.0 must be above 0"),
    ("optimizer.lr=-1", "optimizer.lr in override 'optimizer.lr=-1': -1.0 must be above 0"),
    ("model.dropout=1.5", "model.dropout in override 'model.dropout=1.5': 1.5 must be below 1"),
])
def test_values_out_of_range(refused, override, says):
    assert says in refused(override)


@pytest.mark.parametrize("args, says", [
    (["--gpus", "4", "--gpu-type", "a100"],
     "slurm.gpus_per_node=4 asks for 4 a100 GPUs per node but the largest node of partition debug "
     "has 2: use --gpus 2"),
    (["--gpus", "2", "--gpu-type", "v100"],
     "slurm.gpu_type=v100: no node of partition debug has v100 GPUs; use --gpu-type a100"),
    (["slurm.cpus_per_task=8"],
     "slurm.cpus_per_task=8 × 1 task per node needs 8 CPUs but the largest node of partition debug "
     "has 2: use slurm.cpus_per_task=2"),
    (["--backend", "horovod", "--gpus", "2", "slurm.cpus_per_task=2"],
     "slurm.cpus_per_task=2 × 2 tasks per node needs 4 CPUs but the largest node of partition debug "
     "has 2: use slurm.cpus_per_task=1"),
    (["slurm.mem=100G"],
     "slurm.mem=100G asks for 102400 MB per node but the largest node of partition debug that fits "
     "the rest has 8000 MB: use slurm.mem=8000M"),
    (["--nodes", "4", "--backend", "multiworker"],  # 4: the demo's batch of 64 divides over 4 replicas
     "slurm.nodes=4 asks for 4 nodes but partition debug has 2: use --nodes 2"),
    (["--partition", "nosuch"], "slurm.partition 'nosuch': no such partition; this cluster has debug"),
])
def test_requests_the_cluster_cannot_meet_name_what_fits(refused, args, says):
    assert says in refused(*args)


@pytest.fixture
def short_partition(slurm_cluster):
    """A partition of node1 with a 30-minute limit, for as long as the test runs (the local
    cluster's own partition has none)."""
    name = f"short{uuid.uuid4().hex[:6]}"
    subprocess.run(["scontrol", "create", f"PartitionName={name}", "Nodes=node1", "MaxTime=30",
                    "State=UP"], check=True, capture_output=True, timeout=30)
    try:
        yield name
    finally:
        subprocess.run(["scontrol", "delete", f"PartitionName={name}"], capture_output=True, timeout=30)


def test_more_time_than_the_partition_allows(refused, short_partition):
    err = refused("--partition", short_partition, "--time", "60")
    assert f"slurm.time_min=60 is above the time limit of partition {short_partition} (30 min): use --time 30" in err


def test_more_nodes_than_a_partition_has(refused, short_partition):
    err = refused("--partition", short_partition, "--nodes", "2", "--backend", "multiworker")
    assert f"asks for 2 nodes but partition {short_partition} has 1: use --nodes 1" in err


def test_dry_run_does_preflight(launch_cli, slurm_cluster, run_root, tmp_path):
    done = launch_cli("--dry-run", "--run-root", run_root, "slurm.cpus_per_task=8")
    assert done.returncode != 0 and "use slurm.cpus_per_task=2" in done.stderr
    assert done.stdout == "" and not run_root.exists()
    # Data that is not there yet is a warning in a dry run, which writes nothing.
    done = launch_cli("--dry-run", "--run-root", run_root, *tfrecord(tmp_path / "later"))
    assert done.returncode == 0 and done.stdout.startswith("#!/bin/bash\n")
    assert done.stderr.startswith("launch: warning: data.data_dir") and done.stderr.count("\n") == 1
    assert "launch without --dry-run refuses this" in done.stderr


def test_no_preflight_skips_the_checks(launch_cli, slurm_cluster, run_root, tmp_path):
    done = launch_cli("--dry-run", "--no-preflight", "--run-root", run_root, "slurm.cpus_per_task=8",
                      *tfrecord(tmp_path / "later"))
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert "#SBATCH --cpus-per-task=8" in done.stdout


def test_a_job_slurm_can_never_start_is_submitted_with_a_warning(launch_cli, slurm_cluster, run_root):
    done = launch_cli("--no-preflight", "--run-root", run_root, "slurm.cpus_per_task=8")
    assert done.returncode == 0, done.stderr
    job_id = re.search(r"^submitted job (\d+)", done.stdout, re.M).group(1)
    try:
        assert done.stderr == (f"launch: warning: job {job_id} is queued but SLURM says it cannot start "
                               f"(Reason=PartitionConfig), which waiting does not clear; see scontrol "
                               f"show job {job_id}, then scancel {job_id} and launch a smaller request\n")
    finally:
        subprocess.run(["scancel", job_id], timeout=30)


def test_account_with_a_hash_is_kept_and_quoted(launch_cli, slurm_cluster, run_root):
    done = launch_cli("--dry-run", "--run-root", run_root, "slurm.account=proj #7")
    assert done.returncode == 0, done.stderr
    assert "#SBATCH --account='proj #7'\n" in done.stdout


@contextlib.contextmanager
def tmpfs(folder: Path, options: str):
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip()}); needs root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_full_run_root_is_refused_naming_the_path(launch_cli, slurm_cluster, tmp_path):
    with tmpfs(tmp_path / "disk", "size=1m") as disk:
        done = launch_cli("--run-root", disk / "runs", "--emit-sbatch", tmp_path / "a.sbatch")
        assert done.returncode != 0 and done.stderr.count("\n") == 1, done.stderr
        assert f"launch: error: only 1 MB free on {disk} (run root {disk / 'runs'})" in done.stderr
        assert not (disk / "runs").exists()


def test_a_run_dir_that_cannot_be_written_names_it_and_is_removed(launch_cli, slurm_cluster, tmp_path):
    # Room to pass the free-space check, but inodes for only a few files: writing the run fails.
    with tmpfs(tmp_path / "disk", "size=100m,nr_inodes=5") as disk:
        done = launch_cli("--run-root", disk / "runs", "--emit-sbatch", tmp_path / "a.sbatch")
        assert done.returncode != 0 and done.stderr.count("\n") == 1, done.stderr
        assert re.match(rf"launch: error: cannot write the run directory {disk / 'runs'}/demo-\S+: "
                        "No space left on device", done.stderr), done.stderr
        assert list((disk / "runs").iterdir()) == []


@pytest.mark.parametrize("text, minutes", [
    ("UNLIMITED", None), ("30", 30), ("30:00", 30), ("02:00:00", 120), ("1-00:00:00", 1440),
    ("2-12", 3600),
])
def test_partition_time_limits_in_minutes(text, minutes):
    assert preflight.time_minutes(text) == minutes


def test_gres_of_several_gpu_types_is_read_per_type():
    assert preflight.gres_gpus("gpu:a100:4(S:0-1),gpu:v100:2,shard:8") == {"a100": 4, "v100": 2}
    assert preflight.gres_gpus("gpu:2") == {"": 2} and preflight.gres_gpus("(null)") == {}


def test_fit_on_a_partition_with_typed_gpus_and_memory_limits():
    parts = preflight.parse_cluster(
        "PartitionName=gpu Default=NO MaxNodes=UNLIMITED MaxTime=1-00:00:00 MaxCPUsPerNode=UNLIMITED "
        "MaxMemPerNode=64000 Nodes=g[1-2]\n",
        "NodeName=g1 CPUTot=32 CPUEfctv=32 RealMemory=256000 Gres=gpu:v100:8 Partitions=gpu\n"
        "NodeName=g2 CPUTot=16 CPUEfctv=16 RealMemory=128000 Gres=gpu:a100:4 Partitions=gpu,long\n")
    gpu = parts["gpu"]
    fits = SlurmConfig(gpus_per_node=4, gpu_type="a100", cpus_per_task=16, mem="60G", time_min=1440)
    assert preflight.fit_problem(fits, "mirrored", gpu) is None
    assert "has 64000 MB: use slurm.mem=64000M" in preflight.fit_problem(
        SlurmConfig(gpus_per_node=4, gpu_type="a100", cpus_per_task=16, mem="100G"), "mirrored", gpu)
    assert "(1440 min): use --time 1440" in preflight.fit_problem(
        SlurmConfig(time_min=2000), "mirrored", gpu)
    # The a100 node has 16 CPUs, though another node of the partition has 32.
    assert "has 16: use slurm.cpus_per_task=16" in preflight.fit_problem(
        SlurmConfig(gpus_per_node=4, gpu_type="a100", cpus_per_task=20), "mirrored", gpu)


def test_the_demos_cache_root_is_checked_like_any_data_folder(launch_cli, run_root):
    done = launch_cli("--run-root", run_root, "--cluster", "slurm", "data.data_dir=/nonexistent/demo-cache")
    assert done.returncode == 2 and not run_root.exists()
    assert done.stderr.strip() == ("launch: error: data.data_dir /nonexistent/demo-cache does not exist; the demo "
                                   "builds its data set in that folder: create it, or leave data.data_dir unset "
                                   "for the default cache")


@pytest.mark.slurm
def test_a_refused_launch_prints_only_its_error_line(launch_cli, run_root, slurm_cluster):
    done = launch_cli("--run-root", run_root, "--cluster", "slurm", "--nodes", "4")
    assert done.returncode == 2 and not run_root.exists()
    assert done.stderr.strip().splitlines() == [
        "launch: error: slurm.nodes=4 asks for 4 nodes but partition debug has 2: use --nodes 2"]
