"""Shared fixtures: the local SLURM cluster, a scratch run root, and `launch` as a subprocess."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from slurm_jobs import node_is_up
from training.data.demo import CACHE_ENV

REPO = Path(__file__).resolve().parent.parent
CLUSTER_NODES = ("node1", "node2")
# The demo sets (digits, movie-review snippets) are built on first use in their cache folder
# (training/data/demo.py): for the suite, one in the checkout's build/, not the user's ~/.cache.
# The tests' processes and jobs get it from this environment (sbatch passes it on).
os.environ.setdefault(CACHE_ENV, str(REPO / "build" / "data-cache"))
START_HINT = "start it with: slurm/local_cluster.sh start"


def node_states() -> dict[str, str]:
    """{node: state} as `sinfo -N` reports them; empty when the controller does not answer."""
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True,
                             timeout=20)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return {}
    return dict(line.split()[:2] for line in out.stdout.splitlines() if len(line.split()) >= 2)


@pytest.fixture(scope="session")
def slurm_cluster() -> dict[str, str]:
    """The local two-node cluster, idle within a minute. Fails, never skips: CI must run these."""
    if shutil.which("sinfo") is None:
        pytest.fail(f"sinfo is not installed, so there is no local SLURM cluster; {START_HINT}")
    deadline = time.monotonic() + 60
    states = node_states()
    while any(states.get(node) != "idle" for node in CLUSTER_NODES) and time.monotonic() < deadline:
        time.sleep(2)
        states = node_states()
    if all(states.get(node) == "idle" for node in CLUSTER_NODES):
        return states
    if all(node_is_up(states.get(node)) for node in CLUSTER_NODES):  # our jobs will queue
        warnings.warn(f"local cluster is busy ({states}); test jobs will queue")
        return states
    pytest.fail(f"local SLURM cluster is not up: sinfo -N shows {states or 'nothing'}; {START_HINT}")


@pytest.fixture
def run_root(tmp_path: Path) -> Path:
    """A folder for run directories; not created, so tests can check that nothing was."""
    return tmp_path / "runs"


def launch_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "LAUNCH_RUN_ROOT"}
    env.update(extra)
    return env


@pytest.fixture
def launch_cli():
    """Runs `launch ARGS...` as a user would (a fresh interpreter), from the repository root."""

    def run(*args: object, timeout: float = 60, env: dict[str, str] | None = None,
            cwd: Path = REPO) -> subprocess.CompletedProcess:
        """`env` adds variables to this process's environment (less LAUNCH_RUN_ROOT)."""
        return subprocess.run([sys.executable, "-m", "launcher.cli", *map(str, args)], cwd=cwd,
                              env=launch_env(**(env or {})), capture_output=True, text=True,
                              timeout=timeout)

    return run


def pytest_collection_modifyitems(config, items):
    """Tests marked chaos take nodes down: they run only when selected by their marker
    (`-m chaos`), never beside other tests.

    Modules that train or run real jobs go first, whole (a module fixture is set up once): with
    two workers, the long tests start early and the short ones fill the gaps at the end."""
    if "chaos" not in (config.getoption("markexpr") or ""):
        chaos = [item for item in items if "chaos" in item.keywords]
        if chaos:
            config.hook.pytest_deselected(items=chaos)
            items[:] = [item for item in items if "chaos" not in item.keywords]

    def weight(module: str) -> int:
        return 0 if module in training else 1 if module in jobs else 2

    training = {item.module.__name__ for item in items if item.get_closest_marker("slow")}
    jobs = {item.module.__name__ for item in items if item.get_closest_marker("slurm")}
    items.sort(key=lambda item: weight(item.module.__name__))
