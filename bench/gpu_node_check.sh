#!/usr/bin/env bash
# Checks one GPU node end to end and measures it, in a fresh virtual environment:
#   1. pip install -e ".[gpu,test]"   (from a folder of wheels when the node has no package index)
#   2. python -m training.gpucheck    (must see every GPU of the node)
#   3. the demo trained on the GPU in local mode (mirrored), then the ResNet-50 benchmark
#   4. with --horovod: the Horovod build (NCCL when a CUDA compiler is there), horovodrun
#      --check-build and the demo with the horovod backend, one rank per GPU
#
#   bench/gpu_node_check.sh OUT_DIR [--wheels DIR] [--horovod] [--skip-install] [--skip-bench]
#
# Everything it prints is also written under OUT_DIR (one log per step). The virtual environment
# is GPU_CHECK_VENV (default /tmp/gpu-check-venv), the runs go to OUT_DIR/runs.
set -uo pipefail
cd "$(dirname "$0")/.."

out=${1:?usage: bench/gpu_node_check.sh OUT_DIR [--wheels DIR] [--horovod] [--skip-install] [--skip-bench]}
shift
wheels="" horovod=0 install=1 bench=1
while (($#)); do
    case $1 in
        --wheels) wheels=$2; shift ;;
        --horovod) horovod=1 ;;
        --skip-install) install=0 ;;
        --skip-bench) bench=0 ;;
        *) echo "gpu_node_check: unknown argument '$1'" >&2; exit 2 ;;
    esac
    shift
done
mkdir -p "$out"
venv=${GPU_CHECK_VENV:-/tmp/gpu-check-venv}
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ')
failures=0

step() {  # step NAME COMMAND...: runs COMMAND, logs to OUT_DIR/NAME.log, prints its tail and time
    local name=$1 start=$SECONDS
    shift
    echo "== $name"
    "$@" >"$out/$name.log" 2>&1
    local rc=$?
    tail -n "${TAIL_LINES:-6}" "$out/$name.log"
    echo "== $name: exit $rc after $((SECONDS - start)) s"
    ((rc == 0)) || failures=$((failures + 1))
    return $rc
}

if [[ -n $wheels ]]; then
    export PIP_NO_INDEX=1 PIP_FIND_LINKS=$wheels  # also for the Horovod build's own pip calls
    mkdir -p build/horovod
    cp -n "$wheels"/horovod-*.tar.gz build/horovod/ 2>/dev/null || true
fi
if ((install)); then
    rm -rf "$venv"
    python3 -m venv "$venv"
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"
export TF_USE_LEGACY_KERAS=1 TF_CPP_MIN_LOG_LEVEL=1 PYTHONUNBUFFERED=1

if ((install)); then
    # The project asks for Python 3.11; a node image may have another 3.x.
    step install pip install -q --ignore-requires-python -e ".[gpu,test]" || exit 1
fi
pip list 2>/dev/null | grep -i -E '^(tensorflow|tf-keras|keras|nvidia-|horovod)' >"$out/pip-list.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$out/nvidia-smi.txt"

step gpucheck python -m training.gpucheck --expect-gpus "$gpus"
step demo-mirrored launch --cluster local --config configs/demo.yaml --run-root "$out/runs" \
    runtime.run_name=demo-mirrored slurm.gpus_per_node="$gpus"
if ((bench)); then
    TAIL_LINES=12 step bench-resnet50 python -m bench.gpu_resnet50 --json "$out/gpu_resnet50.json"
fi
if ((horovod)); then
    step horovod-build training/horovod_build/build.sh --force
    step horovod-demo launch --cluster local --config configs/demo.yaml --run-root "$out/runs" \
        --backend horovod runtime.run_name=demo-horovod slurm.gpus_per_node="$gpus"
fi
echo "gpu_node_check: $failures step(s) failed; logs in $out"
exit $((failures > 0))
