"""`launch` as an installed package: the templates and configs ship inside it, so a wheel installed
outside the checkout renders, dry-runs and trains the embedded demo from any folder."""
from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from launcher import options, packaged

REPO = Path(__file__).resolve().parent.parent
DEMO_EPOCHS = 5  # the demo runs 8; 5 clears its 90% bar (tests/test_training.py) in less time


def _setup_cfg(section: str, key: str) -> str:
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    return parser[section][key]


def test_a_checkout_reads_its_own_folders():
    assert packaged.template_folder() == REPO / "slurm"
    assert (packaged.template_folder() / "job.sbatch.j2").is_file()
    assert options.DEFAULT_CONFIG == REPO / "configs" / "demo.yaml"


@pytest.mark.parametrize("text", ["sentiment_demo", "sentiment_demo.yaml", "configs/sentiment_demo.yaml"])
def test_a_missing_config_file_names_the_packaged_one(text, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    assert options.given_config(text) == str(REPO / "configs" / "sentiment_demo.yaml")


def test_a_file_that_exists_wins_and_other_names_pass_through(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "demo.yaml").write_text("train:\n  epochs: 1\n")
    assert options.given_config("configs/demo.yaml") == "configs/demo.yaml"
    for text in ("configs/nope.yaml", "elsewhere/demo.yaml", "s3://bucket/demo.yaml", None):
        assert options.given_config(text) == text


def _source_copy(dest: Path) -> Path:
    """The checkout without build outputs, runs and git: a stale build/lib must not reach the wheel."""
    shutil.copytree(REPO, dest, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "runs", "*.egg-info", "__pycache__", ".pytest_cache"))
    return dest


def _clean_env(venv: Path) -> dict[str, str]:
    drop = ("PYTHONPATH", "LAUNCH_RUN_ROOT", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("SLURM_")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.mark.slow
def test_the_wheel_installed_outside_the_checkout_runs_the_demo(tmp_path):
    wheels = tmp_path / "wheels"
    # No build isolation: setuptools as installed here, no download; the wheel holds no compiled code.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), str(_source_copy(tmp_path / "src"))], check=True, timeout=300)
    (wheel,) = wheels.glob("slurm_keras_train-*.whl")

    venv = tmp_path / "venv"
    # TensorFlow and the other dependencies come from this interpreter's site-packages; the project
    # itself only from the wheel (--ignore-installed: an editable install there does not count).
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--ignore-installed",
                    str(wheel)], check=True, timeout=300)

    work = tmp_path / "elsewhere"  # no configs/, no slurm/, not the checkout
    work.mkdir()
    env = _clean_env(venv)

    def run(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
        done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"{' '.join(argv)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done

    where = json.loads(run(str(python), "-c", "import json, launcher, training; from launcher import packaged; "
                           "print(json.dumps([launcher.__file__, training.__file__, "
                           "str(packaged.template_folder()), str(packaged.config_folder())]))").stdout)
    site = venv.resolve()
    for path in where:
        assert Path(path).resolve().is_relative_to(site), f"{path} is not from the wheel in {site}"

    launch = str(venv / "bin" / "launch")
    assert run(launch, "--version").stdout.strip() == f"launch {_setup_cfg('metadata', 'version')}"

    script = run(launch, "--dry-run", "--cluster", "local").stdout
    assert script.startswith("#!/bin/bash\n") and "-m training.main" in script
    assert "--job-name=demo-" in script
    text = run(launch, "--config", "configs/sentiment_demo.yaml", "--cluster", "local", "--dry-run").stdout
    assert "--job-name=sentiment_demo-" in text
    assert not (work / "runs").exists(), "a dry run created a run directory"

    run(launch, "--cluster", "local", "--run-root", str(work / "runs"), f"train.epochs={DEMO_EPOCHS}", timeout=600)
    (run_dir,) = (work / "runs").iterdir()
    summary = json.loads((run_dir / "report" / "summary.json").read_text())
    assert summary["target_accuracy"] == 0.9  # configs/demo.yaml: >= 90% validation accuracy
    assert summary["target_reached"], summary
