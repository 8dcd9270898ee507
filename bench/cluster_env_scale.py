"""How long one process of a 1,024-node x 8-GPU job takes to learn its place in the job.

    python bench/cluster_env_scale.py [--runs 5]

Each round starts a fresh Python process (as every srun task does) that reads a simulated SLURM
environment (nodelist `gpu[0001-1024]`, expanded by the real `scontrol show hostnames`) and
computes what the trainer needs: for multiworker (1,024 workers, one per node) the process
layout and TF_CONFIG, for Horovod (8,192 processes, one per GPU) the layout and the HOROVOD_*
variables, for the last rank. Prints the median time of each inside the process (imports
excluded) and the number of hostname expansions, against the goal of < 1 s per process and
one expansion.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GOAL_S = 1.0

ONE_PROCESS = """
import json, sys, time
sys.path.insert(0, {repo!r})
from core import slurm
from training import cluster
from training.backends.horovod_env import horovod_env_from_slurm
nodes, gpus = 1024, 8
def env(per_node):
    rank = nodes * per_node - 1
    return {{"SLURM_JOB_ID": "1", "SLURM_PROCID": str(rank), "SLURM_NTASKS": str(nodes * per_node),
            "SLURM_NODEID": str(nodes - 1), "SLURM_LOCALID": str(per_node - 1),
            "SLURM_JOB_NODELIST": "gpu[0001-1024]", "SLURM_STEP_TASKS_PER_NODE": f"{{per_node}}(x{{nodes}})",
            "SLURMD_NODENAME": "gpu1024"}}
start = time.perf_counter()
spec = cluster.cluster_from_env(env(1))
config = cluster.tf_config(spec, 0)
multiworker = time.perf_counter() - start
slurm.hostnames.cache_clear()
start = time.perf_counter()
e = env(gpus)
spec = cluster.cluster_from_env(e)
hvd = horovod_env_from_slurm(e, cluster.scontrol_hostnames(e["SLURM_JOB_NODELIST"]), "gpu0001", 4000)
horovod = time.perf_counter() - start
assert len(json.loads(config)["cluster"]["worker"]) == nodes and hvd["HOROVOD_RANK"] == str(nodes * gpus - 1)
print(json.dumps({{"multiworker": multiworker, "horovod": horovod,
                  "expansions": slurm.hostnames.cache_info().misses}}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    rounds = [json.loads(subprocess.run([sys.executable, "-c", ONE_PROCESS.format(repo=str(REPO))],
                                        check=True, capture_output=True, text=True).stdout)
              for _ in range(args.runs)]
    mw, hv = (statistics.median(r[k] for r in rounds) for k in ("multiworker", "horovod"))
    expansions = max(r["expansions"] for r in rounds)
    met = max(mw, hv) < GOAL_S and expansions == 1
    print(f"cluster env of a 1,024-node x 8-GPU job, per process: multiworker (1,024 workers, TF_CONFIG) "
          f"median {mw * 1000:.1f} ms, horovod (8,192 ranks) median {hv * 1000:.1f} ms; hostname "
          f"expansions per process {expansions}; goal < {GOAL_S:.0f} s and 1: {'met' if met else 'missed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
