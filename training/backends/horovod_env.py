"""Horovod over Gloo for tasks that `srun` starts: no horovodrun, no ssh, no MPI.

`horovodrun --gloo` does two things (horovod/runner/gloo_run.py): it runs a rendezvous HTTP
server (horovod.runner.http.http_server.RendezvousServer) that the processes meet at, and it
starts every process with its slot in HOROVOD_* variables. Under SLURM, the batch script runs
the server and `srun` starts the processes; `horovod_env_from_slurm` turns each task's SLURM
variables into the slot variables. In the batch script, which SLURM runs on the first node
(tests/test_horovod_env.py runs exactly this on the local cluster)::

    port_file=$(mktemp -d)/horovod_rendezvous_port
    python -m training.backends.horovod_env serve --port-file "$port_file" &
    server=$!
    trap 'kill $server' EXIT
    until [[ -s $port_file ]]; do kill -0 "$server"; sleep 0.2; done
    export HOROVOD_GLOO_RENDEZVOUS_ADDR=$SLURMD_NODENAME
    export HOROVOD_GLOO_RENDEZVOUS_PORT=$(<"$port_file")
    srun python -m training.backends.horovod_env exec -- python -u -m training.main ...

The server stays a child of the batch shell on purpose: SLURM's process tracking then ends it
with the job even if the trap never runs. Inside a container image the server runs in the image
as a job step of its own beside the training step (slurm/container.sbatch.j2), which the batch
script ends with a SIGINT that srun passes on (`srun --disable-status`).

Optional, passed through unchanged when set: HOROVOD_GLOO_IFACE (network interface for Gloo's
traffic; without it each node uses the address its own hostname resolves to).
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import time
from dataclasses import dataclass
from typing import Mapping, Sequence

from training.cluster import scontrol_hostnames

# Gloo's default is 30 s from a process's hvd.init(); tasks that import TensorFlow on a loaded
# node start further apart than that.
DEFAULT_GLOO_TIMEOUT_S = 120


class HorovodEnvError(ValueError):
    """The SLURM layout cannot be turned into Horovod slots; one line saying why."""


@dataclass(frozen=True)
class Slot:
    """One process's place, in the terms of horovod.runner.common.util.hosts.SlotInfo."""

    hostname: str
    rank: int
    local_rank: int
    cross_rank: int
    size: int
    local_size: int
    cross_size: int


def tasks_per_node(value: str) -> list[int]:
    """Expands SLURM's task counts, e.g. `2(x3),1` -> [2, 2, 2, 1] (SLURM_STEP_TASKS_PER_NODE)."""
    counts = []
    for item in value.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", item.strip())
        if not match:
            raise HorovodEnvError(f"cannot read tasks per node {value!r}")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def slot_plan(hostnames: Sequence[str], counts: Sequence[int]) -> list[Slot]:
    """All slots, ranks numbered node by node, as horovodrun's host assignment numbers them.

    Local rank k on every node that has one forms cross group k; its cross rank is the node's
    position among those nodes.
    """
    if len(hostnames) != len(counts):
        raise HorovodEnvError(f"{len(hostnames)} hostnames but task counts for {len(counts)} nodes")
    size = sum(counts)
    # Cross groups computed once, not once per slot: a 1,024-node x 8-GPU job has 8,192 slots.
    groups = [[n for n, c in enumerate(counts) if c > k] for k in range(max(counts, default=0))]
    cross_rank = [{n: i for i, n in enumerate(group)} for group in groups]
    slots, rank = [], 0
    for node, (host, local_size) in enumerate(zip(hostnames, counts)):
        for local_rank in range(local_size):
            slots.append(Slot(hostname=host, rank=rank, local_rank=local_rank,
                              cross_rank=cross_rank[local_rank][node], size=size,
                              local_size=local_size, cross_size=len(groups[local_rank])))
            rank += 1
    return slots


def _int(env: Mapping[str, str], *names: str) -> int:
    for name in names:
        if env.get(name, "") != "":
            try:
                return int(env[name])
            except ValueError:
                raise HorovodEnvError(f"{name}={env[name]!r} is not an integer") from None
    raise HorovodEnvError(f"{' or '.join(names)} is not set; start the processes with srun")


def horovod_env_from_slurm(env: Mapping[str, str], hostnames: Sequence[str],
                           rendezvous_addr: str, rendezvous_port: int) -> dict[str, str]:
    """The HOROVOD_* variables that make `hvd.init()` join the Gloo job of this srun step.

    Args:
        env: this task's environment (SLURM_NODEID, SLURM_LOCALID, SLURM_STEP_TASKS_PER_NODE...).
        hostnames: the step's nodes in order, from `scontrol show hostnames "$SLURM_JOB_NODELIST"`.
        rendezvous_addr: host name or address of the rendezvous server (the batch host).
        rendezvous_port: its TCP port.

    Returns:
        Variables to add to the task's environment before Horovod initializes. The rank comes
        from the node and local index, numbered node by node like horovodrun does, so it equals
        SLURM_PROCID under srun's default block distribution and stays consistent under others.
    """
    if not hostnames:
        raise HorovodEnvError("no hostnames for the allocation (scontrol show hostnames printed none)")
    counts_value = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    if not counts_value:
        raise HorovodEnvError("SLURM_STEP_TASKS_PER_NODE is not set; start the processes with srun")
    counts = tasks_per_node(counts_value)
    if len(counts) != len(hostnames):
        raise HorovodEnvError(
            f"the srun step has tasks on {len(counts)} nodes but the allocation has {len(hostnames)} "
            f"({','.join(hostnames)}); run the step over every node of the allocation")
    ntasks = _int(env, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS")
    if ntasks != sum(counts):
        raise HorovodEnvError(f"SLURM_STEP_NUM_TASKS={ntasks} but the tasks per node ({counts_value}) "
                              f"add up to {sum(counts)}")
    node, local_rank = _int(env, "SLURM_NODEID"), _int(env, "SLURM_LOCALID")
    if not (0 <= node < len(counts) and 0 <= local_rank < counts[node]):
        raise HorovodEnvError(f"SLURM_NODEID={node} SLURM_LOCALID={local_rank} lie outside the step's "
                              f"layout {counts_value}")
    slot = slot_plan(hostnames, counts)[sum(counts[:node]) + local_rank]
    return {
        "HOROVOD_CONTROLLER": "gloo",
        "HOROVOD_CPU_OPERATIONS": "gloo",
        "HOROVOD_GLOO_RENDEZVOUS_ADDR": rendezvous_addr,
        "HOROVOD_GLOO_RENDEZVOUS_PORT": str(rendezvous_port),
        "HOROVOD_GLOO_TIMEOUT_SECONDS": env.get("HOROVOD_GLOO_TIMEOUT_SECONDS", str(DEFAULT_GLOO_TIMEOUT_S)),
        # The node name, not gethostname(): two SLURM nodes may share a machine (the local
        # test cluster), and Horovod groups local ranks by this name.
        "HOROVOD_HOSTNAME": slot.hostname,
        "HOROVOD_RANK": str(slot.rank),
        "HOROVOD_SIZE": str(slot.size),
        "HOROVOD_LOCAL_RANK": str(slot.local_rank),
        "HOROVOD_LOCAL_SIZE": str(slot.local_size),
        "HOROVOD_CROSS_RANK": str(slot.cross_rank),
        "HOROVOD_CROSS_SIZE": str(slot.cross_size),
    }


# ---- thin launcher: `serve` in the batch script, `exec` in front of every srun task ----------

def _allocation_hostnames(env: Mapping[str, str]) -> list[str]:
    if not env.get("SLURM_JOB_NODELIST"):
        raise HorovodEnvError("SLURM_JOB_NODELIST is not set; run this inside a SLURM job")
    return scontrol_hostnames(env["SLURM_JOB_NODELIST"])


def serve(port_file: str, tasks_per_node_value: str | None) -> None:
    """Runs Horovod's rendezvous server for this job until killed; writes its port to port_file."""
    # A job step of its own (in a container) also gets the job's time-limit warning, --signal=USR1,
    # which SLURM sends to every step: it is for the trainer, and would end the server.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    from horovod.runner.http.http_server import RendezvousServer

    hostnames = _allocation_hostnames(os.environ)
    counts_value = tasks_per_node_value or os.environ.get("SLURM_TASKS_PER_NODE", "")
    if not counts_value:
        raise HorovodEnvError("SLURM_TASKS_PER_NODE is not set; pass --tasks-per-node")
    server = RendezvousServer()
    port = server.start()
    # The scope sizes let the server drop each rendezvous round's keys once every rank is done.
    server.init(slot_plan(hostnames, tasks_per_node(counts_value)))
    partial = f"{port_file}.partial"
    with open(partial, "w") as f:
        f.write(f"{port}\n")
    os.replace(partial, port_file)  # readers never see a half-written port
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:  # the batch script ending the server's step: not an error
        pass


def exec_task(command: list[str]) -> None:
    """Replaces this process with `command`, run with this task's Horovod variables."""
    addr = os.environ.get("HOROVOD_GLOO_RENDEZVOUS_ADDR")
    port = os.environ.get("HOROVOD_GLOO_RENDEZVOUS_PORT")
    if not addr or not port:
        raise HorovodEnvError("HOROVOD_GLOO_RENDEZVOUS_ADDR and HOROVOD_GLOO_RENDEZVOUS_PORT must be "
                              "exported by the batch script (see `serve`)")
    env = dict(os.environ)
    env.update(horovod_env_from_slurm(env, _allocation_hostnames(env), addr, int(port)))
    os.execvpe(command[0], command, env)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.backends.horovod_env",
                                     description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run the rendezvous server (batch script, background)")
    serve_parser.add_argument("--port-file", required=True, help="file that receives the server's port")
    serve_parser.add_argument("--tasks-per-node", help="SLURM-style counts (default: $SLURM_TASKS_PER_NODE)")
    exec_parser = commands.add_parser("exec", help="run COMMAND as this srun task's Horovod process")
    exec_parser.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- COMMAND")
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            serve(args.port_file, args.tasks_per_node)
        else:
            command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
            if not command:
                parser.error("exec needs a command after --")
            exec_task(command)
    except HorovodEnvError as err:
        sys.exit(f"horovod_env: {err}")


if __name__ == "__main__":
    main()
