"""SLURM / local-launcher environment -> process layout and TF_CONFIG (pure functions)."""
import json

from training.cluster import cluster_from_env, tf_config


def fake_hostnames(nodelist):
    assert nodelist == "node[1-2]"
    return ["node1", "node2"]


def slurm_env(procid, ntasks=2, localid=0, node="node1", **extra):
    return {"SLURM_JOB_ID": "42", "SLURM_PROCID": str(procid), "SLURM_NTASKS": str(ntasks),
            "SLURM_LOCALID": str(localid), "SLURM_JOB_NODELIST": "node[1-2]",
            "SLURMD_NODENAME": node, **extra}


def test_one_task_per_node_maps_ranks_to_nodes_in_order():
    spec = cluster_from_env(slurm_env(1, node="node2"), fake_hostnames)
    assert (spec.rank, spec.world_size, spec.job_id, spec.node_name) == (1, 2, "42", "node2")
    assert spec.hosts == ("node1", "node2")
    assert not spec.is_chief


def test_tf_config_gives_each_worker_its_own_port_even_on_a_shared_host():
    spec = cluster_from_env(slurm_env(0), lambda _: ["node1", "node1"])
    config = json.loads(tf_config(spec, 29500))
    assert config["cluster"]["worker"] == ["node1:29500", "node1:29501"]
    assert config["task"] == {"type": "worker", "index": 0}


def test_several_tasks_per_node_are_placed_block_wise():
    spec = cluster_from_env(slurm_env(3, ntasks=4, localid=1, node="node2"), fake_hostnames)
    assert spec.hosts == ("node1", "node1", "node2", "node2")
    assert (spec.rank, spec.local_rank) == (3, 1)


def test_step_variables_win_over_job_variables_and_restarts_are_counted():
    env = slurm_env(0, SLURM_STEP_NUM_TASKS="1", SLURM_STEP_NODELIST="node[1-2]", SLURM_RESTART_COUNT="2")
    spec = cluster_from_env(env, fake_hostnames)
    assert spec.world_size == 1
    assert spec.restart_count == 2


def test_local_launcher_variables_without_slurm():
    spec = cluster_from_env({"LAUNCH_RANK": "1", "LAUNCH_WORLD_SIZE": "2"})
    assert (spec.rank, spec.world_size, spec.job_id) == (1, 2, None)
    assert spec.hosts == ("localhost", "localhost")


def test_no_variables_is_a_single_process():
    spec = cluster_from_env({})
    assert (spec.rank, spec.world_size, spec.is_chief) == (0, 1, True)


def test_an_array_task_is_named_by_array_and_task_id_so_a_requeue_touches_only_it():
    # The array's first task has SLURM_JOB_ID == SLURM_ARRAY_JOB_ID: requeueing that id would
    # requeue every point of the sweep.
    env = slurm_env(0, SLURM_JOB_ID="228", SLURM_ARRAY_JOB_ID="228", SLURM_ARRAY_TASK_ID="0")
    assert cluster_from_env(env, fake_hostnames).job_id == "228_0"
    env = slurm_env(0, SLURM_JOB_ID="231", SLURM_ARRAY_JOB_ID="228", SLURM_ARRAY_TASK_ID="3")
    assert cluster_from_env(env, fake_hostnames).job_id == "228_3"
