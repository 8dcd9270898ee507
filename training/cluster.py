"""Where this process sits in the job: pure functions of the environment, no TensorFlow.

Two sources are understood: SLURM (`srun` sets SLURM_PROCID and friends) and the local
launcher (`launch --cluster local` sets LAUNCH_RANK / LAUNCH_WORLD_SIZE). Hostnames of a SLURM
allocation come from `scontrol show hostnames`, never from parsing the nodelist by hand.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Mapping

from core import slurm


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
            restart_count=int(env.get("SLURM_RESTART_COUNT") or 0))
    world = int(env.get("LAUNCH_WORLD_SIZE", 1))
    rank = int(env.get("LAUNCH_RANK", 0))
    return ClusterSpec(rank=rank, world_size=world, local_rank=int(env.get("LAUNCH_LOCAL_RANK", rank)),
                       hosts=("localhost",) * world, job_id=None, node_name="localhost")


def worker_addresses(spec: ClusterSpec, base_port: int) -> list[str]:
    """`host:port` of each worker. Ports differ per rank, so two workers that share a host
    (as on the local test cluster, or several tasks per node) never collide."""
    return [f"{host}:{base_port + rank}" for rank, host in enumerate(spec.hosts)]


def tf_config(spec: ClusterSpec, base_port: int) -> str:
    """The TF_CONFIG value for MultiWorkerMirroredStrategy; every rank is a worker, 0 is chief."""
    return json.dumps({"cluster": {"worker": worker_addresses(spec, base_port)},
                       "task": {"type": "worker", "index": spec.rank}})
