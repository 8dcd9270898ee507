"""`launch` subcommands: --help with an example, one-line errors, dry runs with the site's options,
convert here, resume as an alias, and cancel on the real local cluster."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from core import rundir
from core.config import Config, dump
from core.errors import EXIT_CODE
from slurm_jobs import ONE_CPU

REPO = Path(__file__).resolve().parent.parent
SUBCOMMANDS = ("train", "config", "eval", "predict", "gpucheck", "convert", "runs", "cancel", "resume")


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help_with_a_worked_example(launch_cli, command):
    done = launch_cli(command, "--help")
    assert done.returncode == 0, done.stderr
    example = done.stdout.split("example:\n", 1)[1].splitlines()[0].strip()
    word = "" if command == "train" else command
    assert example.startswith(f"launch {word}".rstrip()), example


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A run directory as launch leaves it, with a checkpoint to evaluate and site options set."""
    folder = tmp_path / "runs" / "demo-20261122-101500"
    (folder / rundir.CHECKPOINTS).mkdir(parents=True)
    (folder / rundir.CHECKPOINTS / rundir.BEST_CHECKPOINT).write_bytes(b"stand-in")
    cfg = Config()
    cfg.slurm.gpus_per_node, cfg.slurm.gpu_type, cfg.slurm.gpu_style = 2, "a100", "gpus-per-node"
    cfg.slurm.partition, cfg.slurm.account, cfg.slurm.qos = "gpu", "proj 7", "high"
    cfg.slurm.setup = ["module load cuda/12.2"]
    (folder / rundir.CONFIG).write_text(dump(cfg))
    return folder


def assert_one_line_error(done: subprocess.CompletedProcess, says: str) -> None:
    assert done.returncode == EXIT_CODE, (done.returncode, done.stderr)
    assert done.stderr.startswith("launch: error: ") and done.stderr.count("\n") == 1, done.stderr
    assert says in done.stderr
    assert "submitted" not in done.stdout


@pytest.mark.parametrize("argv, says", [
    (["eval", "{tmp}/nowhere"], "not a run directory"),
    (["eval", "{run}", "--checkpoint", "latest"], "the run has saved no resumable checkpoint yet"),
    (["eval", "{run}", "--checkpoint", "final"], "model/final.h5 does not exist"),
    (["eval", "{run}", "--checkpoint", "final", "--dry-run"], "model/final.h5 does not exist"),
    (["eval", "{run}", "--split", "test"], "invalid choice: 'test'"),
    (["eval", "{run}", "slurm.qos=1", "--gpu-style", "magic"], "'magic' is not one of gres"),
    (["predict", "{run}", "--images", "{tmp}/nowhere", "--out", "{tmp}/p.csv"], "is not a folder"),
    (["predict", "{run}", "--images", "{tmp}"], "--out FILE is missing"),
    (["predict", "{run}", "--text", "a fine film", "--out", "{tmp}/p.csv"], "is an image run: pass --images"),
    (["gpucheck", "--nodes", "0"], "ask for at least one node"),
    (["gpucheck", "--run-dir", "{run}", "--config", "configs/demo.yaml"], "drop --config"),
    (["convert", "{tmp}/nowhere", "{tmp}/out"], "SRC {tmp}/nowhere is not a folder"),
    (["convert", "{tmp}", "{run}"], "exists and is not an empty folder"),
    (["cancel", "{tmp}"], "not a run directory"),
    (["runs", "--run-root", "{tmp}/nowhere"], "run root {tmp}/nowhere is not a folder"),
    (["resume"], "name the run directory first"),
    (["resume", "{tmp}", "--dry-run"], "not a run directory"),
])
def test_mistakes_are_one_line_exit_2_and_submit_nothing(launch_cli, run, tmp_path, argv, says):
    fill = {"tmp": str(tmp_path), "run": str(run)}
    before = sorted(p.name for p in run.rglob("*"))
    done = launch_cli(*[a.format(**fill) for a in argv])
    assert_one_line_error(done, says.format(**fill))
    assert sorted(p.name for p in run.rglob("*")) == before


def test_eval_job_takes_the_runs_site_options_and_one_gpu(launch_cli, run):
    done = launch_cli("eval", run, "--dry-run", "--qos", "low")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for directive in ("--gpus-per-node=a100:1", "--partition=gpu", "--account='proj 7'", "--qos=low",
                      "--job-name=eval", f"--output={run}/logs/eval-%j.out", "--time=60"):
        assert f"#SBATCH {directive}" in lines
    assert "module load cuda/12.2" in lines
    assert f"-m training.evaluate eval --run-dir {run} --checkpoint best --split val" in done.stdout
    assert not (run / rundir.LOGS).exists()


def test_resume_is_an_alias_of_the_resume_flag(launch_cli, run):
    alias = launch_cli("resume", run, "--time", "45", "--dry-run", "--no-preflight")
    flag = launch_cli("--resume", run, "--time", "45", "--dry-run", "--no-preflight")
    assert alias.returncode == flag.returncode == 0, alias.stderr
    assert alias.stdout == flag.stdout and "#SBATCH --time=45" in alias.stdout


@pytest.mark.slow
def test_convert_here_writes_shards(launch_cli, tmp_path):
    for split, count in (("train", 4), ("val", 2)):
        for cls in ("cat", "dog"):
            folder = tmp_path / "photos" / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (40, 30), (i * 40, 90, 200 if cls == "dog" else 10)).save(folder / f"{i}.jpg")
    out = tmp_path / "shards"
    done = launch_cli("convert", tmp_path / "photos", out, "--max-side", "32", "--cluster", "local",
                      "--shards-train", "2", "--shards-val", "1", "--shards-test", "1", timeout=300)
    assert done.returncode == 0, done.stderr
    labels = json.loads((out / "labels.json").read_text())
    assert labels["classes"] == ["cat", "dog"] and labels["stored"]["max_side"] == 32
    assert len(list(out.glob("train-*-of-00002"))) == 2


@pytest.mark.slurm
def test_cancel_ends_the_runs_job_and_says_how_the_run_stands(launch_cli, run_root, slurm_cluster):
    started = launch_cli("--config", "configs/demo.yaml", "--run-root", run_root, "--time", "10",
                         "train.epochs=50", ONE_CPU)
    assert started.returncode == 0, started.stderr
    job = re.search(r"submitted job (\d+)", started.stdout).group(1)
    (run_dir,) = run_root.iterdir()
    done = launch_cli("cancel", run_dir, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"cancelled job(s) {job} of {run_dir}" in done.stdout
    state = subprocess.run(["squeue", "-h", "--states=all", "-j", job, "-o", "%T"], capture_output=True,
                           text=True).stdout.strip()
    assert state in ("", "CANCELLED"), state
    status = json.loads((run_dir / rundir.STATUS).read_text()) if (run_dir / rundir.STATUS).is_file() else {}
    assert status.get("state") not in ("starting", "running"), status
    again = launch_cli("cancel", run_dir)
    assert again.returncode == 0 and "nothing to cancel" in again.stdout


def test_subcommands_answer_without_tensorflow(run, tmp_path):
    """The login-node side: dry runs of every job kind import neither TensorFlow nor submitit."""
    code = (
        "import json, sys\n"
        "from launcher.cli import main\n"
        f"run, tmp = {str(run)!r}, {str(tmp_path)!r}\n"
        "codes = [main(['eval', run, '--dry-run']),\n"
        "         main(['predict', run, '--images', tmp, '--out', tmp + '/p.csv', '--dry-run']),\n"
        "         main(['gpucheck', '--run-dir', run, '--dry-run', '--no-preflight']),\n"
        "         main(['convert', tmp, tmp + '/shards', '--dry-run']),\n"
        "         main(['resume', run, '--dry-run', '--no-preflight'])]\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'keras', 'tf_keras', 'submitit'))\n"
        "print(json.dumps({'codes': codes, 'heavy': heavy}), file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert json.loads(done.stderr.strip().splitlines()[-1]) == {"codes": [0] * 5, "heavy": []}
    assert done.stdout.count("#!/bin/bash\n") == 5


TWO_NODES = ("PartitionName=debug Default=YES MaxNodes=UNLIMITED MaxTime=UNLIMITED MaxCPUsPerNode=UNLIMITED "
             "MaxMemPerNode=UNLIMITED Nodes=node[1-2]\n",
             "NodeName=node1 CPUTot=2 CPUEfctv=2 RealMemory=8000 Gres=gpu:a100:2 Partitions=debug\n"
             "NodeName=node2 CPUTot=2 CPUEfctv=2 RealMemory=8000 Gres=gpu:a100:2 Partitions=debug\n")


@pytest.mark.parametrize("argv", [["--nodes", "3", "--backend", "multiworker", "data.batch_size=66"],
                                  ["gpucheck", "--nodes", "3"]])
def test_gpucheck_is_checked_against_the_partition_like_a_training_run(monkeypatch, capsys, tmp_path, argv):
    from core import slurm
    from launcher import cli

    monkeypatch.setattr(slurm, "can_query", lambda: True)
    monkeypatch.setattr(slurm, "show", lambda what: TWO_NODES[what == "node"])
    monkeypatch.setattr(slurm, "available", lambda: True)  # runtime.cluster auto: to SLURM
    assert cli.main([*argv, "--run-root", str(tmp_path / "runs"), "--dry-run"]) == EXIT_CODE
    out, err = capsys.readouterr()
    assert err == "launch: error: slurm.nodes=3 asks for 3 nodes but partition debug has 2: use --nodes 2\n"
    assert out == "" and not (tmp_path / "runs").exists()
    assert cli.main(["gpucheck", "--nodes", "2", "--gpus", "2", "--dry-run"]) == 0  # what fits passes
    assert cli.main(["gpucheck", "--nodes", "3", "--dry-run", "--no-preflight"]) == 0
