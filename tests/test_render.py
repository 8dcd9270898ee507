"""The rendered sbatch scripts: golden files per GPU style x backend for training, one per task
job (eval, predict, gpucheck, convert), and hostile values.

Refresh the golden files after an intended change with:
    UPDATE_GOLDEN=1 pytest tests/test_render.py
"""
from __future__ import annotations

import difflib
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from launcher import jobs
from core.config import BACKENDS, GPU_STYLES, Config, ConfigError, SlurmConfig
from launcher.render import TaskJob, directives, gpu_request, render_sbatch, world_size

GOLDEN = Path(__file__).resolve().parent / "golden"
RUN_DIR = Path("/shared/runs/golden-20250101-000000")
PYTHON = "/opt/venv/bin/python"


def golden_slurm(style: str, backend: str) -> SlurmConfig:
    return SlurmConfig(nodes=1 if backend == "mirrored" else 2, gpus_per_node=4, gpu_type="a100",
                       gpu_style=style, cpus_per_task=8, mem="64G", time_min=90, partition="gpu",
                       constraint="ib", job_name="golden", setup=["module load cuda/12.2"])


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        return
    if not path.is_file():
        pytest.fail(f"{path} is missing; create it with UPDATE_GOLDEN=1 pytest tests/test_render.py")
    expected = path.read_text()
    if text != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True),
                                            f"golden/{name}", "rendered now"))
        pytest.fail(f"rendered script differs from {path}; if intended, refresh with "
                    f"UPDATE_GOLDEN=1 pytest tests/test_render.py\n{diff}", pytrace=False)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("style", GPU_STYLES)
def test_golden(style, backend):
    text = render_sbatch(golden_slurm(style, backend), backend, RUN_DIR, PYTHON, 120)
    check_golden(f"{style}-{backend}.sbatch", text)


# Each task job as launcher/commands.py builds it: (command after the interpreter, request).
TASKS = {
    "eval": (["-u", "-m", "training.evaluate", "eval", "--run-dir", str(RUN_DIR), "--checkpoint", "best",
              "--split", "val", "--batch-size", "0"], jobs.Request(gpus_per_node=1, time_min=60)),
    "predict": (["-u", "-m", "training.evaluate", "predict", "--run-dir", str(RUN_DIR), "--checkpoint",
                 "final", "--images", "/shared/new photos", "--out", "/shared/preds.csv", "--top-k", "5",
                 "--batch-size", "32"], jobs.Request(gpus_per_node=1, time_min=60)),
    "gpucheck": (["-m", "training.gpucheck"], jobs.Request(nodes=2, gpus_per_node=4, cpus_per_task=1,
                                                          time_min=10)),
    "convert": (["-u", "-m", "training.data.convert", "/shared/photos", "/shared/shards", "--max-side",
                 "512"], jobs.Request()),
    "convert-array": (["-u", "-m", "training.data.convert", "/shared/photos", "/shared/shards",
                       "--array-tasks", "8", "--shards-train", "128"], jobs.Request()),
}
ARRAYS = {"convert-array": "0-7"}  # launch convert --array-tasks 8


def task_config(style: str) -> Config:
    cfg = Config()
    cfg.slurm = golden_slurm(style, "multiworker")
    cfg.slurm.account, cfg.slurm.qos, cfg.slurm.job_name = "proj 7", "high", ""
    return cfg


@pytest.mark.parametrize("kind", TASKS)
def test_golden_task_jobs(kind):
    args, request = TASKS[kind]
    job = TaskJob(kind.split("-")[0], (PYTHON, *args), RUN_DIR / "logs", ARRAYS.get(kind, ""),
                  every_node=kind == "gpucheck")  # as launcher/commands.py asks for it
    check_golden(f"task-{kind}.sbatch", jobs.render(task_config("gres"), job, request))


@pytest.mark.parametrize("style", GPU_STYLES)
def test_task_jobs_take_the_site_options_of_training(style):
    """The same partition, account, QoS, GPU style and setup lines as the training script."""
    cfg = task_config(style)
    args, request = TASKS["gpucheck"]
    task = sbatch_lines(jobs.render(cfg, TaskJob("gpucheck", (PYTHON, *args), RUN_DIR), request))
    named = SlurmConfig(**{**vars(cfg.slurm), "job_name": "j"})
    train = sbatch_lines(render_sbatch(named, "multiworker", RUN_DIR, PYTHON, 60))
    site = ("--partition", "--account", "--qos", "--mem", "--gres", "--gpus-per-node", "--constraint")
    assert [d for d in task if d.startswith(site)] == [d for d in train if d.startswith(site)]
    text = jobs.render(cfg, TaskJob("convert", (PYTHON, "-m", "x"), RUN_DIR), jobs.Request())
    assert "module load cuda/12.2\n" in text
    assert not [d for d in sbatch_lines(text) if d.startswith(("--gres", "--gpus"))]  # no GPUs asked


def test_no_stray_golden_files():
    expected = {f"{s}-{b}.sbatch" for s in GPU_STYLES for b in BACKENDS}
    expected |= {f"task-{kind}.sbatch" for kind in TASKS}
    assert {p.name for p in GOLDEN.glob("*.sbatch")} == expected


def sbatch_lines(text: str) -> list[str]:
    return [line.split(None, 1)[1] for line in text.splitlines() if line.startswith("#SBATCH ")]


@pytest.mark.parametrize("style, gpu_type, expected", [
    ("gres", "a100", {"gres": "gpu:a100:4"}),
    ("gres", "", {"gres": "gpu:4"}),
    ("gpus-per-node", "a100", {"gpus-per-node": "a100:4"}),
    ("gpus-per-node", "", {"gpus-per-node": "4"}),
    ("constraint", "a100", {"gpus-per-node": "4", "constraint": "a100"}),
    ("constraint", "", {"gpus-per-node": "4"}),
])
def test_gpu_request_styles(style, gpu_type, expected):
    assert gpu_request(SlurmConfig(gpus_per_node=4, gpu_type=gpu_type, gpu_style=style)) == expected


def test_constraint_style_ands_extra_features():
    slurm = SlurmConfig(gpus_per_node=2, gpu_type="a100", gpu_style="constraint", constraint="ib")
    assert gpu_request(slurm) == {"gpus-per-node": "2", "constraint": "a100&ib"}


def test_no_gpu_directive_without_gpus():
    text = render_sbatch(SlurmConfig(gpus_per_node=0, job_name="cpu"), "mirrored", RUN_DIR, PYTHON, 60)
    assert not [d for d in sbatch_lines(text) if d.startswith(("--gres", "--gpus", "--constraint"))]


@pytest.mark.parametrize("backend, per_node, world", [("mirrored", 1, 1), ("multiworker", 1, 3),
                                                      ("horovod", 4, 12)])
def test_tasks_follow_the_backend(backend, per_node, world):
    slurm = SlurmConfig(nodes=1 if backend == "mirrored" else 3, gpus_per_node=4, job_name="t")
    text = render_sbatch(slurm, backend, RUN_DIR, PYTHON, 60)
    assert f"--ntasks-per-node={per_node}" in sbatch_lines(text)
    assert f"--ntasks={world} --ntasks-per-node={per_node} --cpus-per-task=8" in text
    assert world_size(slurm, backend) == world


def test_horovod_on_cpu_runs_one_task_per_node():
    slurm = SlurmConfig(nodes=2, gpus_per_node=0, job_name="t")
    assert world_size(slurm, "horovod") == 2


def test_directives_are_sorted_and_optional_ones_appear_only_when_set():
    plain = sbatch_lines(render_sbatch(SlurmConfig(job_name="j", signal_lead_s=0), "mirrored",
                                       RUN_DIR, PYTHON, 60))
    assert plain == sorted(plain)
    assert not [d for d in plain if d.startswith(("--signal", "--mem", "--partition", "--account",
                                                  "--qos", "--exclusive"))]
    full = sbatch_lines(render_sbatch(
        SlurmConfig(job_name="j", account="proj", qos="high", exclusive=True, signal_lead_s=120),
        "mirrored", RUN_DIR, PYTHON, 60))
    assert {"--account=proj", "--qos=high", "--exclusive", "--signal=USR1@120"} <= set(full)


def test_signal_lead_must_fit_in_the_time_limit():
    with pytest.raises(ConfigError, match="signal_lead_s 300 is not shorter than the time limit"):
        render_sbatch(SlurmConfig(job_name="j", time_min=5), "mirrored", RUN_DIR, PYTHON, 60)


def test_setup_lines_are_verbatim_before_srun():
    setup = ["module load cuda/12.2", 'source "$HOME/venv/bin/activate"']
    text = render_sbatch(SlurmConfig(job_name="j", setup=setup), "mirrored", RUN_DIR, PYTHON, 60)
    body = text.splitlines()
    assert body.index(setup[0]) + 1 == body.index(setup[1]) < body.index(next(
        line for line in body if line.startswith("srun ")))


def test_percent_in_run_dir_is_escaped_for_sbatch_only():
    text = render_sbatch(SlurmConfig(job_name="j"), "mirrored", Path("/runs/a%jb"), PYTHON, 60)
    assert "--output=/runs/a%%jb/logs/slurm-%j.out" in sbatch_lines(text)
    assert "export LAUNCH_RUN_DIR=/runs/a%jb" in text


def test_backslash_is_refused():
    # sbatch drops backslashes in #SBATCH lines even inside quotes, so the path would differ.
    with pytest.raises(ConfigError, match="backslash"):
        directives(SlurmConfig(job_name="a\\b"), "mirrored", RUN_DIR)


HOSTILE = [
    "x'; touch {marker}; echo '",
    'x"; touch {marker}; echo "',
    "$(touch {marker})",
    "`touch {marker}`",
    "a b; touch {marker} #",
]


@pytest.fixture
def shim_bin(tmp_path: Path) -> Path:
    """A PATH folder whose `srun` records its arguments and LAUNCH_RUN_DIR instead of running: the
    last step's in SHIM_RECORD, a container image's removal at the end in SHIM_RECORD.cleanup."""
    folder = tmp_path / "bin"
    folder.mkdir()
    srun = folder / "srun"
    srun.write_text('#!/bin/bash\nout=$SHIM_RECORD\nfor arg; do [[ $arg == enroot ]] && out=$SHIM_RECORD.cleanup; done\n'
                    'printf "%s\\0" "$LAUNCH_RUN_DIR" "$@" > "$out"\n')
    srun.chmod(0o755)
    return folder


@pytest.mark.parametrize("pattern", HOSTILE)
def test_hostile_job_name_and_run_dir_stay_inert(tmp_path, shim_bin, pattern):
    marker = tmp_path / "pwned"
    value = pattern.format(marker=shlex.quote(str(marker)))
    run_dir = tmp_path / f"run {value}"
    text = render_sbatch(SlurmConfig(job_name=value), "multiworker", run_dir, PYTHON, 60)
    script = tmp_path / "job.sbatch"
    script.write_text(text)
    syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr

    record = tmp_path / "srun-args"
    env = {"PATH": f"{shim_bin}:{os.environ['PATH']}", "SHIM_RECORD": str(record)}
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert not marker.exists(), "an injected command ran"
    seen_run_dir, *args = record.read_text().split("\0")[:-1]
    assert seen_run_dir == str(run_dir)
    assert args[-6:] == [PYTHON, "-u", "-m", "training.main", "--run-dir", str(run_dir)]
    assert f"--job-name={shlex.quote(value)}" in sbatch_lines(text)


def test_control_characters_in_run_dir_are_refused():
    with pytest.raises(ConfigError, match="run directory .* contains a control character"):
        render_sbatch(SlurmConfig(job_name="j"), "mirrored", Path("/runs/a\nb"), PYTHON, 60)


@pytest.mark.parametrize("pattern", HOSTILE)
def test_hostile_paths_in_a_task_job_stay_inert(tmp_path, shim_bin, pattern):
    marker = tmp_path / "pwned"
    value = pattern.format(marker=shlex.quote(str(marker)))
    command = (PYTHON, "-m", "training.evaluate", "predict", "--images", str(tmp_path / f"photos {value}"))
    job = TaskJob("predict", command, tmp_path / f"logs {value}")
    cfg = Config()
    cfg.slurm.job_name = value
    script = tmp_path / "task.sbatch"
    script.write_text(jobs.render(cfg, job, jobs.Request()))
    record = tmp_path / "srun-args"
    env = {"PATH": f"{shim_bin}:{os.environ['PATH']}", "SHIM_RECORD": str(record)}
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert not marker.exists(), "an injected command ran"
    assert record.read_text().split("\0")[:-1][-len(command):] == list(command)
