"""A run says what produced it: logs/provenance.json (core/provenance.py), written by launch (the
project's version, the config's git state) and by the job's chief (the code's git state, the
software stack, nodes and GPUs), shown in summary.json and `launch runs --json`. The job's part
and TensorBoard's text are checked on the demo run in tests/test_training.py."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from core import provenance, rundir
from launcher import cli

REPO = Path(__file__).resolve().parent.parent


def git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@example.com",
                           *args], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def config_in_git(tmp_path: Path) -> Path:
    """configs/demo.yaml committed in a fresh git work tree."""
    repo = tmp_path / "experiments"
    repo.mkdir()
    git(repo, "init", "-q")
    config = repo / "demo.yaml"
    config.write_text((REPO / "configs" / "demo.yaml").read_text())
    git(repo, "add", "demo.yaml")
    git(repo, "commit", "-q", "-m", "demo")
    return config


def test_git_state_names_the_commit_and_whether_the_file_changed(config_in_git, tmp_path):
    commit = git(config_in_git.parent, "rev-parse", "HEAD")
    assert provenance.git_state(config_in_git) == {"commit": commit, "dirty": False}
    (config_in_git.parent / "notes.txt").write_text("another file's change does not make this one dirty")
    assert provenance.git_state(config_in_git) == {"commit": commit, "dirty": False}
    assert provenance.git_state(config_in_git.parent)["dirty"] is True  # the work tree as a whole
    config_in_git.write_text(config_in_git.read_text() + "# tuned\n")
    assert provenance.git_state(config_in_git) == {"commit": commit, "dirty": True}
    outside = tmp_path / "loose.yaml"
    outside.write_text("train: {epochs: 1}\n")
    assert provenance.git_state(outside) is None


def test_launch_records_the_project_version_and_the_configs_commit(capsys, config_in_git, tmp_path):
    run_root = tmp_path / "runs"
    assert cli.main(["--config", str(config_in_git), "--run-root", str(run_root),
                     "--emit-sbatch", str(tmp_path / "job.sbatch")]) == 0
    (run_dir,) = run_root.iterdir()
    record = json.loads((run_dir / rundir.LOGS / rundir.PROVENANCE).read_text())
    assert record["launch"]["project_version"] == provenance.project_version()
    assert record["launch"]["config"] == {"path": str(config_in_git), "dirty": False,
                                          "commit": git(config_in_git.parent, "rev-parse", "HEAD")}
    assert provenance.read(run_dir) == record


def test_summary_and_launch_runs_json_show_it(capsys, tmp_path):
    from training.report.summary import derive

    run_dir = tmp_path / "demo-20261122-101500"
    (run_dir / rundir.LOGS).mkdir(parents=True)
    (run_dir / rundir.CONFIG).write_text("train:\n  epochs: 10\n")
    provenance.write_part(run_dir, "launch", {"project_version": "0.1.0"})
    whole = provenance.write_part(run_dir, "job", {"tensorflow": "2.21.0", "nodes": 2})
    assert whole == {"launch": {"project_version": "0.1.0"}, "job": {"tensorflow": "2.21.0", "nodes": 2}}
    assert derive(run_dir)["provenance"] == whole
    assert cli.main(["runs", "--run-root", str(tmp_path), "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["provenance"] == whole
