#!/usr/bin/env bash
# The README's test command: installs everything the suite needs on a fresh Debian machine
# (as root), starts the local two-node SLURM cluster, and runs the whole suite.
#
#   ./tests/install_and_run.sh [pytest args...]
#
# Steps are idempotent, so a second run skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== system packages (OpenMPI and build tools for Horovod; SLURM comes with the cluster script)"
need=()
for pkg in openmpi-bin libopenmpi-dev cmake g++ make; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ((${#need[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

echo "== Python packages"
python3 -m pip install -q --disable-pip-version-check -e ".[train,test,s3]"

echo "== Horovod for this TensorFlow"
training/horovod_build/build.sh

echo "== local SLURM cluster"
slurm/local_cluster.sh start

# After the cluster: Pyxis is built against the SLURM release the cluster runs, and the running
# daemons pick it up without a restart. Both steps are quick when nothing changed.
echo "== containers: enroot and Pyxis for srun, and the test image"
slurm/containers/build_pyxis.sh
slurm/containers/build_image.sh

echo "== test suite"
# Three tests at a time on two cores: much of a real-job test is waiting on SLURM (a requeue, a
# time-limit warning), and a third worker fills those waits (docs/testing.md has the figures). A
# module whose tests share one expensive fixture stays on one worker (pytest.mark.xdist_group).
python3 -m pytest -ra -n 3 --dist loadgroup "$@"

# The chaos test takes a node down, so it runs alone, after the rest (tests/test_chaos.py); only
# for the whole suite, not for a selection passed as arguments.
if (($# == 0)); then
    echo "== chaos: a two-node run under random faults"
    python3 -m pytest -ra -s -m chaos
fi
