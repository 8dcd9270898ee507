"""Task jobs (eval, predict, gpucheck, convert) inside a container image: golden files, the job's
folders mounted, hostile image paths and mounts kept inert, the image check, and the refusals
before the queue.

Refresh the golden files after an intended change with:
    UPDATE_GOLDEN=1 pytest tests/test_container_tasks.py
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from core import rundir, slurm
from core.config import Config, dump, load_config
from core.errors import EXIT_CODE
from launcher import cli, jobs
from launcher.container import Container, PROJECT_ROOT
from launcher.render import TaskJob, render_task_sbatch
from tests.test_commands import TWO_NODES
from tests.test_container_render import IMAGES, golden_container, hostile_container, last_step_inside
from tests.test_render import GOLDEN, HOSTILE, PYTHON, RUN_DIR, TASKS, check_golden, shim_bin, task_config  # noqa: F401


def render(kind: str, box: Container | None, cfg: Config | None = None) -> str:
    """The task job as launcher/commands.py asks for it, with the golden site options unless `cfg`."""
    args, request = TASKS[kind]
    job = TaskJob(kind, (PYTHON, *args), RUN_DIR / "logs", every_node=kind == "gpucheck")
    return render_task_sbatch(jobs.task_slurm(cfg or task_config("gres"), job, request), job, box)


@pytest.mark.parametrize("kind", ["eval", "gpucheck"])
@pytest.mark.parametrize("engine", ["pyxis", "apptainer"])
def test_golden(engine, kind):
    check_golden(f"container/{engine}-task-{kind}.sbatch", render(kind, golden_container(engine)))


def test_no_stray_container_golden_files():
    names = {f"{engine}-{what}.sbatch" for engine in IMAGES
             for what in ("mirrored", "horovod", "task-eval", "task-gpucheck")}
    assert {p.name for p in (GOLDEN / "container").glob("*.sbatch")} == names


def test_without_a_container_the_task_script_is_the_hosts():
    text = render("eval", None)
    assert "container" not in text and "apptainer" not in text
    assert text.endswith(f"    {PYTHON} -u -m training.evaluate eval --run-dir {RUN_DIR} --checkpoint best "
                         "--split val --batch-size 0\n")


def test_a_task_of_no_run_mounts_its_own_folders_and_no_data(tmp_path):
    cfg = load_config(None, [f"container.image={tmp_path}/img.sqsh", f"data.data_dir={tmp_path}",
                             "storage.scratch=/local"])
    job = TaskJob("convert", (PYTHON, "-m", "training.data.convert"), tmp_path / "logs",
                  folders=(("/photos", "SRC"), ("/shards", "OUT's folder")))
    box = jobs.job_container(cfg, job)
    assert [m.spec() for m in box.mounts] == [f"{PROJECT_ROOT}:{PROJECT_ROOT}", "/local:/local",
                                              "/photos:/photos", "/shards:/shards"]


@pytest.mark.parametrize("engine", ["pyxis", "apptainer"])
@pytest.mark.parametrize("pattern", HOSTILE)
def test_hostile_image_mounts_and_paths_stay_inert(tmp_path, shim_bin, pattern, engine):  # noqa: F811
    value, box = hostile_container(engine, pattern, tmp_path)
    command = (PYTHON, "-m", "training.evaluate", "predict", "--images", str(tmp_path / f"photos {value}"))
    job = TaskJob("predict", command, tmp_path / f"logs {value}")
    cfg = Config()
    cfg.slurm.job_name = value
    args = last_step_inside(render_task_sbatch(jobs.task_slurm(cfg, job, jobs.Request()), job, box), box,
                            tmp_path, shim_bin)
    assert args[-len(command):] == ["python3", *command[1:]]  # the image's interpreter, not the host's


def test_an_image_that_cannot_run_ends_the_task_job_in_one_line(tmp_path):
    folder = tmp_path / "bin"
    folder.mkdir()
    # The check step fails as an image without TensorFlow would; the gpucheck step must not start.
    (folder / "srun").write_text('#!/bin/bash\nfor a; do [ "$a" = training.gpucheck ] && { touch "$RAN"; exit 0; }; '
                                 'done\necho "ModuleNotFoundError: No module named \'tensorflow\'" >&2; exit 1\n')
    (folder / "srun").chmod(0o755)
    script = tmp_path / "task.sbatch"
    script.write_text(render("gpucheck", golden_container("apptainer"), Config()))
    env = {"PATH": f"{folder}:{os.environ['PATH']}", "RAN": str(tmp_path / "ran")}
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert not (tmp_path / "ran").exists()
    assert done.stderr.splitlines() == [f"launch: error: image {IMAGES['apptainer']} cannot run the trainer: "
                                        "ModuleNotFoundError: No module named 'tensorflow'"]


@pytest.fixture
def to_slurm(monkeypatch):
    """launch as on a login node: sbatch there, the partition fits; every submission recorded, none made."""
    monkeypatch.setattr(slurm, "available", lambda: True)
    monkeypatch.setattr(slurm, "can_query", lambda: True)
    monkeypatch.setattr(slurm, "show", lambda what: TWO_NODES[what == "node"])
    submitted = []
    monkeypatch.setattr(jobs, "submit_job", lambda *args: submitted.append(args) or "1")
    monkeypatch.setattr(jobs, "run_here", lambda *args: submitted.append(args) or 0)
    return submitted


@pytest.fixture
def run(tmp_path: Path) -> Path:
    folder = tmp_path / "runs" / "demo-20261122-101500"
    (folder / rundir.CHECKPOINTS).mkdir(parents=True)
    (folder / rundir.CHECKPOINTS / rundir.BEST_CHECKPOINT).write_bytes(b"stand-in")
    (folder / rundir.CONFIG).write_text(dump(Config()))
    return folder


@pytest.mark.parametrize("command", [["gpucheck", "--run-root", "{tmp}"], ["eval", "{run}"]])
def test_a_missing_image_is_refused_before_the_queue(tmp_path, run, to_slurm, capsys, command):
    argv = [a.format(tmp=tmp_path, run=run) for a in command]
    before = sorted(tmp_path.rglob("*"))
    assert cli.main([*argv, "runtime.cluster=slurm", f"container.image={tmp_path}/missing.sqsh"]) == EXIT_CODE
    out, err = capsys.readouterr()
    assert err == (f"launch: error: container.image {tmp_path}/missing.sqsh does not exist; build or copy the image "
                   "there (a squashfs for Pyxis: enroot import; a .sif for Apptainer: apptainer build)\n")
    assert out == "" and to_slurm == [] and sorted(tmp_path.rglob("*")) == before


def test_a_container_job_is_not_run_here(tmp_path, to_slurm, capsys):
    (tmp_path / "img.sif").write_bytes(b"sif")
    argv = ["gpucheck", "--cluster", "local", "container.engine=apptainer", f"container.image={tmp_path}/img.sif"]
    assert cli.main(argv) == EXIT_CODE
    assert "containers run on SLURM only" in capsys.readouterr().err and to_slurm == []


def test_predict_mounts_what_it_reads_and_writes(tmp_path, run, to_slurm, capsys, monkeypatch):
    (tmp_path / "photos").mkdir()
    (tmp_path / "img.sif").write_bytes(b"sif")
    monkeypatch.chdir(tmp_path)  # ./img.sif is read where launch ran
    argv = ["predict", str(run), "--images", "photos", "--out", "preds.csv", "--dry-run", "runtime.cluster=slurm",
            "container.engine=apptainer", "container.image=./img.sif"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    script = capsys.readouterr().out
    binds = f"{run}:{run},{PROJECT_ROOT}:{PROJECT_ROOT},/tmp:/tmp,{tmp_path}/photos:{tmp_path}/photos,{tmp_path}:{tmp_path}"
    assert f"apptainer exec --nv --cleanenv --bind {binds} --pwd {PROJECT_ROOT} {tmp_path}/img.sif \\\n" in script
    assert f"    python3 -u -m training.evaluate predict --images {tmp_path}/photos --out {tmp_path}/preds.csv" in script


def test_convert_into_a_folder_that_is_not_there_is_refused_in_a_container(tmp_path, to_slurm, capsys):
    (tmp_path / "photos").mkdir()
    (tmp_path / "img.sif").write_bytes(b"sif")
    argv = ["convert", str(tmp_path / "photos"), str(tmp_path / "a" / "shards"), "--run-root", str(tmp_path),
            "runtime.cluster=slurm", "container.engine=apptainer", f"container.image={tmp_path}/img.sif"]
    assert cli.main(argv) == EXIT_CODE
    assert capsys.readouterr().err == (f"launch: error: OUT's folder {tmp_path}/a does not exist, so the container "
                                       "cannot mount it; create it first\n")
    (tmp_path / "a").mkdir()
    assert cli.main(argv) == 0 and len(to_slurm) == 1
    assert f"--bind {PROJECT_ROOT}:{PROJECT_ROOT},/tmp:/tmp,{tmp_path}/photos:{tmp_path}/photos," \
           f"{tmp_path}/a:{tmp_path}/a " in to_slurm[0][0]


def test_gpucheck_names_the_image_that_could_not_run(tmp_path, monkeypatch, capsys):
    from launcher import commands

    log = tmp_path / "gpucheck-7.out"
    log.write_text("")
    error = f"launch: error: image {IMAGES['pyxis']} cannot run the trainer: No module named 'tensorflow'"
    log.with_suffix(".err").write_text(f"srun: error: node1: task 0: Exited with exit code 1\n{error}\n")
    monkeypatch.setattr(commands, "start", lambda *args, **kw: jobs.Outcome(1, "7", log, "FAILED"))
    assert cli.main(["gpucheck", "--run-root", str(tmp_path), "--no-preflight"]) == 1
    out, err = capsys.readouterr()
    assert err.splitlines() == [error]
    assert out.startswith("gpucheck job 7 on 1 node(s), ") and "MISSING: 0 of 1 node(s) reported" in out
