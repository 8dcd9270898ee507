"""Training scripts that run every task inside a container image (Pyxis, Apptainer): golden files,
the config section resolved into mounts, and hostile image paths and mounts kept inert.

Refresh the golden files after an intended change with:
    UPDATE_GOLDEN=1 pytest tests/test_container_render.py
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from core import slurm
from core.config import Config, ConfigError, SlurmConfig, load_config
from launcher import container
from launcher.container import Container, Mount, parse_mount
from launcher.render import APPTAINER_ENV, render_sbatch
from launcher.resume import absolute_paths
from tests.test_render import HOSTILE, PYTHON, RUN_DIR, check_golden, golden_slurm, shim_bin  # noqa: F401

IMAGES = {"pyxis": "/shared/images/trainer.sqsh", "apptainer": "/shared/images/trainer.sif"}


def golden_container(engine: str) -> Container:
    mounts = (Mount(str(RUN_DIR), str(RUN_DIR)), Mount("/opt/project", "/opt/project"),
              Mount("/local/scratch", "/local/scratch"), Mount("/shared/data", "/shared/data"),
              Mount("/shared/models", "/models", "ro"))
    return Container(engine, IMAGES[engine], mounts, "/opt/project", ("WANDB_API_KEY",), "/opt/project",
                     "/local/scratch")


@pytest.mark.parametrize("backend", ["mirrored", "horovod"])
@pytest.mark.parametrize("engine", ["pyxis", "apptainer"])
def test_golden(engine, backend):
    text = render_sbatch(golden_slurm("gres", backend), backend, RUN_DIR, PYTHON, 120,
                         container=golden_container(engine))
    check_golden(f"container/{engine}-{backend}.sbatch", text)


def test_for_run_mounts_what_the_job_reads_at_its_own_path(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    cfg = load_config(None, [f"container.image={tmp_path}/img.sqsh", f"data.data_dir={data}",
                             "storage.scratch=/local", "container.mounts=[/models:/m:ro]"])
    found = container.for_run(cfg, tmp_path / "run")
    assert found.engine == "pyxis"  # an image without an engine: Pyxis
    assert [m.spec() for m in found.mounts] == [f"{tmp_path}/run:{tmp_path}/run",
                                                f"{container.PROJECT_ROOT}:{container.PROJECT_ROOT}",
                                                "/local:/local", f"{data}:{data}", "/models:/m:ro"]
    assert found.workdir == str(container.PROJECT_ROOT)


def test_no_image_no_container():
    assert container.for_run(Config(), Path("/runs/r")) is None
    with pytest.raises(ConfigError, match="container.engine is apptainer but container.image is empty"):
        container.for_run(load_config(None, ["container.engine=apptainer"]), Path("/runs/r"))


@pytest.mark.parametrize("text", ["/a", "a:/b", "/a:/b:ro:x", "/a,b:/b"])
def test_malformed_mounts_are_one_line(text):
    with pytest.raises(ConfigError, match=r"container.mounts"):
        parse_mount(text)


def test_the_trainer_runs_the_images_python_and_the_host_settles():
    text = render_sbatch(golden_slurm("gres", "mirrored"), "mirrored", RUN_DIR, PYTHON, 120,
                         container=golden_container("pyxis"))
    assert f"python3 -u -m training.main --run-dir {RUN_DIR}" in text
    assert f"{PYTHON} -m core.runstatus settle" in text


def hostile_container(engine: str, pattern: str, tmp_path: Path) -> tuple[str, Container]:
    """A container whose image, mount, workdir, project and scratch paths all carry `pattern`
    (which would create tmp_path/pwned if it ever ran), and the pattern's text."""
    value = pattern.format(marker=shlex.quote(str(tmp_path / "pwned")))
    return value, Container(engine, f"/images/{value}.sqsh", (parse_mount(f"/src {value}:/dst {value}"),),
                            f"/work {value}", (), f"/project {value}", f"/tmp {value}")


def last_step_inside(script_text: str, box: Container, tmp_path: Path, shim_bin: Path) -> list[str]:
    """Runs a rendered script with srun shimmed: it must end cleanly, run nothing injected, and
    put its last step inside the image with its mount. Returns that srun's arguments."""
    script = tmp_path / "script.sbatch"
    script.write_text(script_text)
    record = tmp_path / "srun-args"
    env = {"PATH": f"{shim_bin}:{os.environ['PATH']}", "SHIM_RECORD": str(record)}
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "pwned").exists(), "an injected command ran"
    args = record.read_text().split("\0")[1:-1]  # the last srun: the job's step
    (mount,) = box.mounts
    if box.engine == "pyxis":
        assert f"--container-image={box.image}" in args
        assert f"--container-mounts={mount.spec()}" in args
        # At its end, the script removes its named container (unpacked on every node) once per node.
        cleanup = Path(f"{record}.cleanup").read_text().split("\0")[1:-1]
        assert "--ntasks-per-node=1" in cleanup and cleanup[-4:] == ["enroot", "remove", "--force", "pyxis_launch-0"]
    else:
        assert args[args.index("--bind") + 1] == mount.spec()
        assert box.image in args
    return args


@pytest.mark.parametrize("engine", ["pyxis", "apptainer"])
@pytest.mark.parametrize("pattern", HOSTILE)
def test_hostile_image_and_mounts_stay_inert(tmp_path, shim_bin, pattern, engine):  # noqa: F811
    _, box = hostile_container(engine, pattern, tmp_path)
    text = render_sbatch(SlurmConfig(job_name="j"), "multiworker", tmp_path / "run", PYTHON, 60, container=box)
    args = last_step_inside(text, box, tmp_path, shim_bin)
    assert args[-6:] == ["python3", "-u", "-m", "training.main", "--run-dir", str(tmp_path / "run")]


def test_a_failed_image_check_is_one_line_naming_the_image(tmp_path):
    folder = tmp_path / "bin"
    folder.mkdir()
    # The check step fails as an image without TensorFlow would; the training step must not start.
    (folder / "srun").write_text('#!/bin/bash\nfor a; do [ "$a" = -u ] && { touch "$TRAINED"; exit 0; }; done\n'
                                 'echo "ModuleNotFoundError: No module named \'tensorflow\'" >&2; exit 1\n')
    (folder / "srun").chmod(0o755)
    (folder / "python-host").write_text("#!/bin/bash\nexit 0\n")
    (folder / "python-host").chmod(0o755)
    text = render_sbatch(SlurmConfig(job_name="j"), "mirrored", tmp_path / "run", str(folder / "python-host"), 60,
                         container=golden_container("pyxis"))
    script = tmp_path / "job.sbatch"
    script.write_text(text)
    env = {"PATH": f"{folder}:{os.environ['PATH']}", "TRAINED": str(tmp_path / "trained")}
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert not (tmp_path / "trained").exists()
    assert (f"launch: error: image {IMAGES['pyxis']} cannot run the trainer: "
            "ModuleNotFoundError: No module named 'tensorflow'") in done.stderr.splitlines()


def preflight_config(tmp_path: Path, *overrides: str) -> Config:
    image = tmp_path / "trainer.sqsh"
    image.write_bytes(b"hsqs")
    return load_config(None, [f"container.image={image}", *overrides])


PYXIS_HELP = "Usage: srun [OPTIONS...] executable\n      --container-image=[USER@][REGISTRY#]IMAGE[:TAG]|PATH\n"


def test_preflight_passes_an_image_srun_can_run(tmp_path):
    assert container.check(preflight_config(tmp_path), True, srun_help=lambda: PYXIS_HELP) == []


def test_preflight_without_pyxis_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"^container.engine pyxis: srun here has no --container-image, so the "
                                          r"Pyxis plugin is not installed; .*apptainer$"):
        container.check(preflight_config(tmp_path), True, srun_help=lambda: "Usage: srun [OPTIONS...]\n")


def test_preflight_refuses_a_missing_image(tmp_path):
    cfg = load_config(None, [f"container.image={tmp_path}/missing.sqsh"])
    with pytest.raises(ConfigError, match=r"container.image .*/missing.sqsh does not exist; build or copy"):
        container.check(cfg, True, srun_help=lambda: PYXIS_HELP)


def test_preflight_refuses_a_relative_image_pyxis_would_pull(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "img.sqsh").write_bytes(b"hsqs")
    with pytest.raises(ConfigError, match="Pyxis reads a relative path as an image name from a registry"):
        container.check(load_config(None, ["container.image=build/img.sqsh"]), True, srun_help=lambda: PYXIS_HELP)


def test_preflight_checks_mount_sources_and_warns_without_apptainer(tmp_path):
    cfg = preflight_config(tmp_path, f"container.mounts=[{tmp_path}/nowhere:/m]")
    with pytest.raises(ConfigError, match=r"container.mounts .*nowhere.*does not exist"):
        container.check(cfg, True, srun_help=lambda: PYXIS_HELP)
    cfg = preflight_config(tmp_path, "container.engine=apptainer", f"container.mounts=[{tmp_path}:/m]")
    assert container.check(cfg, True, which=lambda name: None) == [
        "apptainer is not on PATH here; the job needs it on the compute nodes"]


def test_preflight_refuses_a_container_outside_slurm(tmp_path):
    with pytest.raises(ConfigError, match="containers run on SLURM only"):
        container.check(preflight_config(tmp_path), False, srun_help=lambda: PYXIS_HELP)


def test_an_image_path_is_made_absolute_where_launch_ran_but_not_a_registry_name(tmp_path):
    cfg = load_config(None, ["container.image=./img.sqsh"])
    absolute_paths(cfg, tmp_path)
    assert cfg.container.image == str(tmp_path / "img.sqsh")
    cfg = load_config(None, ["container.image=nvcr.io/nvidia/tensorflow:24.01-tf2-py3"])
    absolute_paths(cfg, tmp_path)
    assert cfg.container.image == "nvcr.io/nvidia/tensorflow:24.01-tf2-py3"


def test_the_trainer_in_an_image_reads_the_hosts_the_script_expanded(monkeypatch):
    monkeypatch.setenv("PATH", "")  # no scontrol, as in an image
    monkeypatch.setenv("SLURM_JOB_NODELIST", "node[1-2]")
    monkeypatch.setenv(slurm.JOB_HOSTNAMES_ENV, "node1 node2 ")
    slurm.hostnames.cache_clear()
    try:
        assert slurm.hostnames("node[1-2]") == ("node1", "node2")
    finally:
        slurm.hostnames.cache_clear()


def test_launch_with_a_missing_image_is_one_line_and_writes_nothing(tmp_path):
    done = subprocess.run([sys.executable, "-m", "launcher.cli", "--config", "configs/demo.yaml",
                           "--run-root", str(tmp_path), "runtime.cluster=slurm",
                           f"container.image={tmp_path}/missing.sqsh"],
                          capture_output=True, text=True, timeout=120, cwd=container.PROJECT_ROOT)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"launch: error: container.image {tmp_path}/missing.sqsh does not exist; "
                                        "build or copy the image there (a squashfs for Pyxis: enroot import; "
                                        "a .sif for Apptainer: apptainer build)"]
    assert list(tmp_path.iterdir()) == []


def test_apptainer_gets_the_tasks_variables_through_its_clean_environment(tmp_path):
    fake = tmp_path / "apptainer"
    fake.write_text('#!/bin/bash\nenv | grep ^APPTAINERENV_ | sort\n')
    fake.chmod(0o755)
    box = golden_container("apptainer")
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "LAUNCH_CONTAINER_ENV": box.passed_env(), "SLURM_PROCID": "3",
           "TF_CONFIG": '{"task": 1}', "WANDB_API_KEY": "k", "SECRET_TOKEN": "no", "AWS_PROFILE": "p"}
    done = subprocess.run(["bash", "-c", APPTAINER_ENV, "apptainer-env", "apptainer", "exec"], env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["APPTAINERENV_AWS_PROFILE=p", "APPTAINERENV_LAUNCH_CONTAINER_ENV=" +
                                        box.passed_env(), "APPTAINERENV_SLURM_PROCID=3",
                                        'APPTAINERENV_TF_CONFIG={"task": 1}', "APPTAINERENV_WANDB_API_KEY=k"]


# An srun that records each step's words; the rendezvous server writes a port and runs until a
# SIGINT (a background job of the script: Python, unlike bash, may catch a SIGINT it inherits ignored).
RENDEZVOUS_SRUN = """#!{python}
import os, signal, sys, time
args, record = sys.argv[1:], os.environ["RECORD"]
def note(text):
    with open(record, "a") as f:
        f.write(text + "\\n")
note(" ".join(args))
if "serve" in args:
    signal.signal(signal.SIGINT, lambda *_: (note("server stopped"), sys.exit(0)))
    with open(args[args.index("--port-file") + 1], "w") as f:
        f.write("4242\\n")
    while True:
        time.sleep(0.1)
if "training.main" in args:
    note("trainer meets at " + os.environ["HOROVOD_GLOO_RENDEZVOUS_ADDR"] + ":" + os.environ["HOROVOD_GLOO_RENDEZVOUS_PORT"])
"""


@pytest.mark.parametrize("engine", ["pyxis", "apptainer"])
def test_horovods_rendezvous_server_runs_in_the_image_and_ends_with_the_script(tmp_path, engine):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text(RENDEZVOUS_SRUN.format(python=sys.executable))
    (tmp_path / "bin" / "srun").chmod(0o755)
    (tmp_path / "scratch").mkdir()
    box = Container(engine, f"/images/trainer.{engine}", (Mount("/data", "/data"),), "/project", (), "/project",
                    str(tmp_path / "scratch"))
    script = tmp_path / "job.sbatch"
    script.write_text(render_sbatch(SlurmConfig(job_name="j"), "horovod", tmp_path / "run", PYTHON, 60, container=box))
    env = {"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "RECORD": str(tmp_path / "record"),
           "SLURMD_NODENAME": "node1", "SLURM_TASKS_PER_NODE": "2(x2)", "SLURM_JOB_ID": "7"}
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    check, server, trainer, met, stopped, *cleanup = (tmp_path / "record").read_text().splitlines()
    # Then Pyxis' named container goes, on every node (Apptainer keeps none).
    assert cleanup == ([] if engine == "apptainer" else
                       ["--overlap --quiet --ntasks=1 --ntasks-per-node=1 --cpus-per-task=8 enroot remove --force "
                        "pyxis_launch-7"])
    assert "import tensorflow" in check  # the server's step reuses the container the check made
    assert server.startswith("--overlap ") and box.image in server  # shares the CPUs, inside the image
    assert re.search(r"python3 -m training.backends.horovod_env serve --port-file "
                     rf"{re.escape(str(tmp_path))}/scratch/launch-horovod-port\.\w{{6}} --tasks-per-node 2\(x2\)$", server), server
    assert box.image in trainer and met == "trainer meets at node1:4242"
    assert stopped == "server stopped" and list((tmp_path / "scratch").iterdir()) == []
