"""SLURM task variables -> Horovod Gloo settings (training/backends/horovod_env.py).

The tests use hand-written env dicts of the kind `srun` sets, and Horovod's own host assignment.
The real thing, four ranks over two nodes through `launch` with the rendezvous server this module
serves, is the Horovod shape of tests/test_container_train_slurm.py (the host's, two nodes a rank
each: tests/test_text_training.py).
"""
from __future__ import annotations

import pytest

from training.backends.horovod_env import (HorovodEnvError, horovod_env_from_slurm, slot_plan,
                                           tasks_per_node)

HOSTS = ["node1", "node2"]


def task_env(node: int, local: int, layout: str = "2(x2)", ntasks: int = 4, **extra: str) -> dict:
    """What srun sets for one task (only the variables that matter here)."""
    env = {"SLURM_NODEID": str(node), "SLURM_LOCALID": str(local), "SLURM_STEP_TASKS_PER_NODE": layout,
           "SLURM_STEP_NUM_TASKS": str(ntasks), "SLURM_JOB_NODELIST": "node[1-2]"}
    env.update(extra)
    return env


def slot_of(env: dict) -> tuple:
    out = horovod_env_from_slurm(env, HOSTS, "node1", 4242)
    return tuple(int(out[f"HOROVOD_{k}"]) for k in ("RANK", "LOCAL_RANK", "CROSS_RANK", "SIZE",
                                                      "LOCAL_SIZE", "CROSS_SIZE")) + (out["HOROVOD_HOSTNAME"],)


def test_four_tasks_on_two_nodes_get_block_ranks():
    slots = [slot_of(task_env(node, local)) for node in (0, 1) for local in (0, 1)]
    assert slots == [
        (0, 0, 0, 4, 2, 2, "node1"),
        (1, 1, 0, 4, 2, 2, "node1"),
        (2, 0, 1, 4, 2, 2, "node2"),
        (3, 1, 1, 4, 2, 2, "node2"),
    ]


def test_controller_and_rendezvous_are_gloo_at_the_given_server():
    out = horovod_env_from_slurm(task_env(1, 0), HOSTS, "node1", 4242)
    assert out["HOROVOD_CONTROLLER"] == out["HOROVOD_CPU_OPERATIONS"] == "gloo"
    assert (out["HOROVOD_GLOO_RENDEZVOUS_ADDR"], out["HOROVOD_GLOO_RENDEZVOUS_PORT"]) == ("node1", "4242")
    assert all(isinstance(value, str) for value in out.values())


def test_gloo_timeout_is_raised_unless_the_user_set_one():
    assert horovod_env_from_slurm(task_env(0, 0), HOSTS, "h", 1)["HOROVOD_GLOO_TIMEOUT_SECONDS"] == "120"
    own = task_env(0, 0, HOROVOD_GLOO_TIMEOUT_SECONDS="600")
    assert horovod_env_from_slurm(own, HOSTS, "h", 1)["HOROVOD_GLOO_TIMEOUT_SECONDS"] == "600"


def test_uneven_layout_matches_horovodrun_cross_groups():
    # 3 tasks on node1, 1 on node2: local rank 0 exists on both nodes, ranks 1-2 only on node1.
    hosts = ["a", "b"]
    env = {"SLURM_STEP_TASKS_PER_NODE": "3,1", "SLURM_STEP_NUM_TASKS": "4"}
    second_node = horovod_env_from_slurm({**env, "SLURM_NODEID": "1", "SLURM_LOCALID": "0"}, hosts, "a", 1)
    assert (second_node["HOROVOD_RANK"], second_node["HOROVOD_CROSS_RANK"],
            second_node["HOROVOD_CROSS_SIZE"], second_node["HOROVOD_LOCAL_SIZE"]) == ("3", "1", "2", "1")
    third_local = horovod_env_from_slurm({**env, "SLURM_NODEID": "0", "SLURM_LOCALID": "2"}, hosts, "a", 1)
    assert (third_local["HOROVOD_RANK"], third_local["HOROVOD_CROSS_SIZE"]) == ("2", "1")


def test_falls_back_to_job_level_variables():
    env = {"SLURM_NODEID": "0", "SLURM_LOCALID": "1", "SLURM_TASKS_PER_NODE": "2(x2)", "SLURM_NTASKS": "4"}
    assert horovod_env_from_slurm(env, HOSTS, "h", 1)["HOROVOD_RANK"] == "1"


@pytest.mark.parametrize("value, counts", [("4", [4]), ("2(x2)", [2, 2]), ("2(x3),1", [2, 2, 2, 1]),
                                           ("1,3(x2)", [1, 3, 3])])
def test_tasks_per_node_expands_slurm_counts(value, counts):
    assert tasks_per_node(value) == counts


@pytest.mark.parametrize("env, hosts, message", [
    ({"SLURM_LOCALID": "0", "SLURM_STEP_TASKS_PER_NODE": "2(x2)", "SLURM_STEP_NUM_TASKS": "4"},
     HOSTS, "SLURM_NODEID is not set"),
    (task_env(0, 0, layout=""), HOSTS, "SLURM_STEP_TASKS_PER_NODE is not set"),
    (task_env(0, 0, layout="2(x3)", ntasks=6), HOSTS, "the srun step has tasks on 3 nodes"),
    (task_env(0, 0, ntasks=5), HOSTS, "SLURM_STEP_NUM_TASKS=5"),
    (task_env(0, 2), HOSTS, "SLURM_LOCALID=2 lie outside"),
    (task_env(0, 0, layout="2(x2);rm -rf"), HOSTS, "cannot read tasks per node"),
    (task_env(0, 0, SLURM_NODEID="one"), HOSTS, "SLURM_NODEID='one' is not an integer"),
    (task_env(0, 0), [], "no hostnames"),
])
def test_bad_layouts_raise_one_line_naming_the_variable(env, hosts, message):
    with pytest.raises(HorovodEnvError, match=message) as info:
        horovod_env_from_slurm(env, hosts, "h", 1)
    assert "\n" not in str(info.value)


def horovod_hosts_module():
    """horovod.runner.common.util.hosts, or a failure that says how to get it (never a skip)."""
    try:
        from horovod.runner.common.util import hosts
    except ImportError as err:
        pytest.fail(f"Horovod is not importable ({err}); build it with training/horovod_build/build.sh")
    return hosts


@pytest.mark.horovod
def test_slot_plan_equals_horovodrun_host_assignment():
    hosts_util = horovod_hosts_module()
    for names, counts in [(["a", "b"], [2, 2]), (["a", "b", "c"], [3, 1, 2]), (["x"], [4])]:
        spec = ",".join(f"{name}:{count}" for name, count in zip(names, counts))
        theirs = hosts_util.get_host_assignments(hosts_util.parse_hosts(spec), sum(counts))
        fields = ("hostname", "rank", "local_rank", "cross_rank", "size", "local_size", "cross_size")
        assert ([tuple(getattr(s, f) for f in fields) for s in slot_plan(names, counts)]
                == [tuple(getattr(s, f) for f in fields) for s in theirs])
