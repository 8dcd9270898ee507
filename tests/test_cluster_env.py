"""SLURM / local-launcher environment -> process layout and TF_CONFIG (pure functions)."""
import json

import pytest

from core import slurm
from training.cluster import END_JOB_PORT, FIRST_JOB_PORT, PORTS_PER_JOB, cluster_from_env, tf_config


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


def workers(env, port=0, hostnames=fake_hostnames):
    return json.loads(tf_config(cluster_from_env(env, hostnames), port))["cluster"]["worker"]


def ports(addresses):
    return [int(address.rpartition(":")[2]) for address in addresses]


def test_jobs_with_nearby_ids_listen_on_separate_port_blocks_below_the_ephemeral_range():
    blocks = {}
    for job_id in range(1000, 1400):
        env = slurm_env(0, ntasks=PORTS_PER_JOB, SLURM_JOB_ID=str(job_id))
        blocks[job_id] = set(ports(workers(env, hostnames=lambda _: ["node1"])))
        assert len(blocks[job_id]) == PORTS_PER_JOB  # a job's ranks on one host: one port each
        assert FIRST_JOB_PORT <= min(blocks[job_id]) and max(blocks[job_id]) < min(END_JOB_PORT, 32768)
    taken = [port for block in blocks.values() for port in block]
    assert len(taken) == len(set(taken))  # no port of one job is another's


def test_every_rank_and_every_restart_of_a_job_computes_the_same_workers():
    seen = {json.dumps(workers(slurm_env(rank, node=f"node{rank + 1}", SLURM_RESTART_COUNT=str(restart))))
            for rank in (0, 1) for restart in (0, 3)}
    assert len(seen) == 1


def test_an_array_task_listens_on_its_own_job_ids_block_not_the_arrays():
    first = workers(slurm_env(0, SLURM_JOB_ID="228", SLURM_ARRAY_JOB_ID="228", SLURM_ARRAY_TASK_ID="0"))
    other = workers(slurm_env(0, SLURM_JOB_ID="231", SLURM_ARRAY_JOB_ID="228", SLURM_ARRAY_TASK_ID="3"))
    assert not set(ports(first)) & set(ports(other))


def test_nodes_that_are_one_machine_give_their_workers_distinct_ports():
    # The local test cluster: node1 and node2 are names of this host.
    assert len(set(ports(workers(slurm_env(0))))) == 2


def test_a_fixed_runtime_port_is_used_as_given():
    assert workers(slurm_env(1, node="node2"), port=41000) == ["node1:41000", "node2:41001"]
    assert workers({"LAUNCH_RANK": "0", "LAUNCH_WORLD_SIZE": "2", "LAUNCH_PORT": "50001"}, port=41000) == \
        ["localhost:41000", "localhost:41001"]


def test_local_ranks_listen_on_the_ports_launch_chose():
    env = {"LAUNCH_RANK": "1", "LAUNCH_WORLD_SIZE": "10", "LAUNCH_PORT": "50001"}
    assert ports(workers(env)) == list(range(50001, 50011))  # launch found ten free in a row


def test_no_port_from_anywhere_is_an_error_not_a_guess():
    with pytest.raises(ValueError, match="neither SLURM nor launch chose"):
        workers({"LAUNCH_RANK": "0", "LAUNCH_WORLD_SIZE": "2"})


# A 1,024-node x 8-GPU job as SLURM describes it to each task (scontrol expands the nodelist).
NODES, GPUS, BASE_PORT = 1024, 8, 29500


def big_job_env(rank: int, per_node: int) -> dict[str, str]:
    node, local = divmod(rank, per_node)
    tasks = NODES * per_node
    return {"SLURM_JOB_ID": "90210", "SLURM_PROCID": str(rank), "SLURM_NTASKS": str(tasks),
            "SLURM_STEP_NUM_TASKS": str(tasks), "SLURM_NODEID": str(node), "SLURM_LOCALID": str(local),
            "SLURM_JOB_NODELIST": "gpu[0001-1024]", "SLURM_STEP_NODELIST": "gpu[0001-1024]",
            "SLURM_STEP_TASKS_PER_NODE": f"{per_node}(x{NODES})", "SLURMD_NODENAME": f"gpu{node + 1:04d}"}


def test_a_1024_node_multiworker_job_has_one_worker_per_node_and_expands_the_nodelist_once():
    slurm.hostnames.cache_clear()
    for rank in (0, 517, NODES - 1):
        spec = cluster_from_env(big_job_env(rank, 1))
        workers = json.loads(tf_config(spec, BASE_PORT))["cluster"]["worker"]
        assert spec.rank == rank and spec.node_name == f"gpu{rank + 1:04d}"
    assert len(workers) == NODES
    assert (workers[0], workers[-1]) == ("gpu0001:29500", f"gpu1024:{BASE_PORT + (NODES - 1) % PORTS_PER_JOB}")
    assert json.loads(tf_config(spec, BASE_PORT))["task"] == {"type": "worker", "index": NODES - 1}
    assert slurm.hostnames.cache_info().misses == 1  # one `scontrol show hostnames` for every rank


def test_a_1024_node_horovod_job_numbers_8192_ranks_node_by_node():
    from training import cluster
    from training.backends.horovod_env import horovod_env_from_slurm

    slurm.hostnames.cache_clear()
    seen = {}
    for rank in (0, 7, 8, 4100, NODES * GPUS - 1):
        env = big_job_env(rank, GPUS)
        spec = cluster_from_env(env)
        hosts = cluster.scontrol_hostnames(env["SLURM_JOB_NODELIST"])
        seen[rank] = horovod_env_from_slurm(env, hosts, "gpu0001", 4000)
        assert spec.hosts[rank] == seen[rank]["HOROVOD_HOSTNAME"] == f"gpu{rank // GPUS + 1:04d}"
        assert (int(seen[rank]["HOROVOD_RANK"]), spec.world_size) == (rank, NODES * GPUS)
        assert int(seen[rank]["HOROVOD_LOCAL_RANK"]) == spec.local_rank == rank % GPUS
    last = seen[NODES * GPUS - 1]
    assert (last["HOROVOD_SIZE"], last["HOROVOD_LOCAL_SIZE"], last["HOROVOD_CROSS_SIZE"]) == ("8192", "8", "1024")
    assert (last["HOROVOD_CROSS_RANK"], seen[8]["HOROVOD_CROSS_RANK"], seen[8]["HOROVOD_LOCAL_RANK"]) == ("1023", "1", "0")
    assert slurm.hostnames.cache_info().misses == 1
