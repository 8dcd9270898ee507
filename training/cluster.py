"""Where this process sits in the job: pure functions of the environment, no TensorFlow.

Two sources are understood: SLURM (`srun` sets SLURM_PROCID and friends) and the local
launcher (`launch --cluster local` sets LAUNCH_RANK / LAUNCH_WORLD_SIZE / LAUNCH_PORT). Hostnames of
a SLURM allocation come from `scontrol show hostnames`, never from parsing the nodelist by hand.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Mapping

from core import slurm

# Worker ports of a job when runtime.port is 0. A SLURM job listens on a block of PORTS_PER_JOB
# ports picked by its job id, so that every rank, and every restart of a requeued job, agrees
# without talking, and jobs that share a node (nodes shared by several jobs, the local test
# cluster whose nodes are one machine) do not collide: ids less than 1,250 apart (the number of
# blocks) never share one. The blocks lie below Linux's ephemeral ports (32768 on) and
# Kubernetes NodePorts (30000 on). Rank r takes block + r % PORTS_PER_JOB: SLURM places ranks
# block-wise, so the ranks on one machine are consecutive and get distinct ports as long as a
# machine holds at most PORTS_PER_JOB of a job's ranks. Multiworker runs one rank per node; the
# room is for node names that alias one machine, as on the local test cluster.
FIRST_JOB_PORT, END_JOB_PORT = 20000, 30000
PORTS_PER_JOB = 8


@dataclass(frozen=True)
class ClusterSpec:
    """This process's place in the job."""

    rank: int  # global process index, 0 is the chief
    world_size: int  # number of processes in the job step
    local_rank: int  # index among the processes on this node (GPU pinning)
    hosts: tuple[str, ...]  # host of each rank, index = rank
    job_id: str | None  # SLURM job id (ARRAYID_TASKID for a sweep's array task), None when local
    node_name: str  # SLURM node name (or "localhost")
    restart_count: int = 0  # times SLURM requeued this job
    job_port: int = 0  # first port of this job's block (from SLURM_JOB_ID or LAUNCH_PORT); 0 = none

    @property
    def is_chief(self) -> bool:
        return self.rank == 0


def scontrol_hostnames(nodelist: str) -> list[str]:
    """Expands a SLURM nodelist (e.g. `node[1-2]`), once per nodelist in a process."""
    return list(slurm.hostnames(nodelist))


def cluster_from_env(env: Mapping[str, str],
                     expand_hostnames: Callable[[str], list[str]] = scontrol_hostnames) -> ClusterSpec:
    """Reads the process layout from SLURM or local-launcher variables.

    SLURM places tasks block-wise by default (ranks 0..k-1 on the first node), which is what the
    rendered script asks for, so rank r runs on node r // tasks_per_node.
    """
    if "SLURM_PROCID" in env and "SLURM_JOB_ID" in env:
        world = int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or 1)
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or ""
        nodes = expand_hostnames(nodelist) if nodelist else [env.get("SLURMD_NODENAME", "localhost")]
        per_node = max(world // len(nodes), 1)
        job_id = env["SLURM_JOB_ID"]
        if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
            job_id = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
        hosts = tuple(nodes[min(r // per_node, len(nodes) - 1)] for r in range(world))
        return ClusterSpec(
            rank=int(env["SLURM_PROCID"]), world_size=world,
            local_rank=int(env.get("SLURM_LOCALID", 0)), hosts=hosts, job_id=job_id,
            node_name=env.get("SLURMD_NODENAME", nodes[0]),
            restart_count=int(env.get("SLURM_RESTART_COUNT") or 0),
            # The numeric SLURM_JOB_ID, not job_id: each task of an array has its own.
            job_port=slurm_job_port(int(env["SLURM_JOB_ID"])))
    world = int(env.get("LAUNCH_WORLD_SIZE", 1))
    rank = int(env.get("LAUNCH_RANK", 0))
    return ClusterSpec(rank=rank, world_size=world, local_rank=int(env.get("LAUNCH_LOCAL_RANK", rank)),
                       hosts=("localhost",) * world, job_id=None, node_name="localhost",
                       job_port=int(env.get("LAUNCH_PORT") or 0))


def slurm_job_port(job_id: int) -> int:
    """First port of the block that SLURM job `job_id` listens on when runtime.port is 0."""
    blocks = (END_JOB_PORT - FIRST_JOB_PORT) // PORTS_PER_JOB
    return FIRST_JOB_PORT + job_id % blocks * PORTS_PER_JOB


def worker_addresses(spec: ClusterSpec, port: int) -> list[str]:
    """`host:port` of each worker, the same list on every rank.

    Args:
        spec: the job's layout.
        port: runtime.port; 0 takes the block the environment chose (spec.job_port).
    """
    base = port or spec.job_port
    if not base:
        raise ValueError("runtime.port is 0 and neither SLURM nor launch chose this job's ports")
    # Locally every rank is on this host, and launch found world_size free ports in a row.
    block = PORTS_PER_JOB if spec.job_id is not None else spec.world_size
    return [f"{host}:{base + rank % block}" for rank, host in enumerate(spec.hosts)]


def tf_config(spec: ClusterSpec, port: int) -> str:
    """The TF_CONFIG value for MultiWorkerMirroredStrategy; every rank is a worker, 0 is chief.
    `port` is runtime.port, as for worker_addresses."""
    return json.dumps({"cluster": {"worker": worker_addresses(spec, port)},
                       "task": {"type": "worker", "index": spec.rank}})
