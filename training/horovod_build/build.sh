#!/usr/bin/env bash
# Builds Horovod 0.28.1 against the installed TensorFlow 2.21 and installs it into the active Python.
#
#   training/horovod_build/build.sh            # no-op when a matching build is already installed
#   training/horovod_build/build.sh --force    # rebuild anyway (or HOROVOD_BUILD_FORCE=1)
#
# Why a project build: the PyPI sdist no longer compiles against TF 2.21 and its Keras
# integration imports Keras 3; horovod-0.28.1-tf2.21.patch beside this file fixes both (each
# hunk is explained at its top). Everything is downloaded and built under build/horovod/ in the
# repository (override with HOROVOD_BUILD_DIR); nothing outside it but the Python install.
# Takes about 3 minutes on 2 cores.
set -euo pipefail

readonly HOROVOD_VERSION=0.28.1
readonly SDIST_SHA256=92a43f5a94c43907a56805bad15f19700c62ffc83b7ca483f9e104e229f67ef0

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$here/../.." && pwd)
build_dir=${HOROVOD_BUILD_DIR:-$repo_root/build/horovod}
patch_file=$here/horovod-$HOROVOD_VERSION-tf2.21.patch
force=${HOROVOD_BUILD_FORCE:-0}

die() { echo "build.sh: error: $*" >&2; exit 1; }
say() { echo "build.sh: $*"; }

for arg in "$@"; do
    case $arg in
        --force) force=1 ;;
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$arg' (valid: --force, --help)" ;;
    esac
done

if command -v python >/dev/null 2>&1; then py=${PYTHON:-python}; else py=${PYTHON:-python3}; fi
command -v "$py" >/dev/null 2>&1 || die "no Python found (tried '$py'); activate the project's Python first"

# Passes only for this project's build: right version, TF extension built against the installed TF,
# Gloo and MPI compiled in, and horovod.tensorflow.keras bound to tf-keras (the patch's Keras hunks).
# TF_CPP_MIN_LOG_LEVEL only quiets TensorFlow's start-up chatter.
installed_build_ok() {
    TF_USE_LEGACY_KERAS=1 TF_CPP_MIN_LOG_LEVEL=3 "$py" - >/dev/null 2>&1 <<EOF
import json, os
import tensorflow as tf
import horovod
assert horovod.__version__ == "$HOROVOD_VERSION", horovod.__version__
with open(os.path.join(os.path.dirname(horovod.__file__), "metadata.json")) as f:
    assert json.load(f).get("tensorflow") == tf.__version__
import horovod.tensorflow as hvd
assert hvd.gloo_built() and hvd.mpi_built()
import horovod.tensorflow.keras as hvd_keras
assert hvd_keras.K.__name__.startswith("tf_keras"), hvd_keras.K.__name__
EOF
}

if [[ $force != 1 ]] && installed_build_ok; then
    say "horovod $HOROVOD_VERSION with TensorFlow $("$py" -c 'import importlib.metadata as m; print(m.version("tensorflow"))') support is already installed; nothing to do (--force to rebuild)"
    exit 0
fi

"$py" -c 'import tensorflow' >/dev/null 2>&1 \
    || die "TensorFlow is not importable from $(command -v "$py"): install the train extra first: pip install -e .[train]"

# System prerequisites: command -> Debian package that provides it.
declare -A apt_package_for=([mpicxx]=libopenmpi-dev [mpirun]=openmpi-bin [cmake]=cmake [g++]=g++ [make]=make [patch]=patch)
missing=()
for cmd in mpicxx mpirun cmake g++ make patch; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${apt_package_for[$cmd]}")
done
if ((${#missing[@]})); then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        say "installing missing apt packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        die "missing build tools; install them with: apt-get install ${missing[*]} (openmpi-bin libopenmpi-dev cmake g++ make patch in all)"
    fi
fi
"$py" -c 'import setuptools, wheel, packaging' >/dev/null 2>&1 \
    || "$py" -m pip install --quiet setuptools wheel packaging

# Source: the PyPI sdist, checked against the hash the patch was made for.
mkdir -p "$build_dir"
sdist=$build_dir/horovod-$HOROVOD_VERSION.tar.gz
if [[ ! -f $sdist ]] || ! echo "$SDIST_SHA256  $sdist" | sha256sum --check --status; then
    say "downloading the horovod $HOROVOD_VERSION sdist into $build_dir"
    rm -f "$sdist"
    "$py" -m pip download --quiet --no-deps --no-binary :all: "horovod==$HOROVOD_VERSION" -d "$build_dir"
    echo "$SDIST_SHA256  $sdist" | sha256sum --check --status \
        || die "$sdist does not have the expected sha256 $SDIST_SHA256; delete it and retry"
fi

# A fresh tree every time: CMake writes copies of gloo into the source tree during the build.
src_root=$build_dir/src
src=$src_root/horovod-$HOROVOD_VERSION
rm -rf "$src_root" "$build_dir/dist"
mkdir -p "$src_root"
tar -xzf "$sdist" -C "$src_root"
patch -d "$src" -p1 --forward --batch --quiet < "$patch_file" \
    || die "$patch_file does not apply to the horovod $HOROVOD_VERSION sdist"

export HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITH_MPI=1
export HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1
export MAKEFLAGS=-j$(nproc)
# CMake 4 refuses the cmake_minimum_required of the bundled gloo; 3.x ignores this variable.
export CMAKE_POLICY_VERSION_MINIMUM=${CMAKE_POLICY_VERSION_MINIMUM:-3.5}
export PIP_ROOT_USER_ACTION=ignore  # CI and the dev machines install into the root Python on purpose
# NCCL GPU operations need a CUDA compiler and an NCCL library of the CUDA major TensorFlow runs.
# NCCL: HOROVOD_NCCL_HOME, else the nvidia-nccl wheel installed beside TensorFlow by the gpu extra
# (linked with an rpath, so Horovod and TensorFlow load the same libnccl), else the system's.
# Compiler: HOROVOD_CUDA_HOME, nvcc on PATH or /usr/local/cuda; the pip CUDA wheels carry no
# nvcc, so a site without a CUDA toolkit (module load cuda) gets the CPU (Gloo/MPI) build.
nvcc_bin=""
if [[ -n ${HOROVOD_CUDA_HOME:-} ]]; then nvcc_bin=$HOROVOD_CUDA_HOME/bin/nvcc
elif command -v nvcc >/dev/null 2>&1; then nvcc_bin=$(command -v nvcc)
elif [[ -x /usr/local/cuda/bin/nvcc ]]; then nvcc_bin=/usr/local/cuda/bin/nvcc
fi
nccl_wheel=$("$py" - 2>/dev/null <<'EOF'
import importlib.util, pathlib
spec = importlib.util.find_spec("nvidia.nccl")
if spec and spec.submodule_search_locations:
    root = pathlib.Path(list(spec.submodule_search_locations)[0])
    if (root / "include" / "nccl.h").is_file() and list((root / "lib").glob("libnccl.so*")):
        print(root)
EOF
) || true
if [[ -n $nvcc_bin && -x $nvcc_bin ]]; then
    export HOROVOD_CUDA_HOME=${HOROVOD_CUDA_HOME:-$(cd "$(dirname "$nvcc_bin")/.." && pwd)}
    if [[ -z ${HOROVOD_NCCL_HOME:-} && -n $nccl_wheel ]]; then
        # The wheel ships libnccl.so.2 only; CMake's find_library wants libnccl.so beside it.
        export HOROVOD_NCCL_HOME=$build_dir/nccl-wheel
        rm -rf "$HOROVOD_NCCL_HOME" && mkdir -p "$HOROVOD_NCCL_HOME/lib"
        ln -s "$nccl_wheel/include" "$HOROVOD_NCCL_HOME/include"
        ln -s "$nccl_wheel/lib/libnccl.so.2" "$HOROVOD_NCCL_HOME/lib/libnccl.so"
        export LDFLAGS="${LDFLAGS:-} -Wl,-rpath,$nccl_wheel/lib"
        say "NCCL from the pip wheel at $nccl_wheel"
    fi
    if [[ -n ${HOROVOD_NCCL_HOME:-} ]] || ldconfig -p 2>/dev/null | grep 'libnccl\.so' >/dev/null; then
        export HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_NCCL_LINK=${HOROVOD_NCCL_LINK:-SHARED}
        say "CUDA compiler $nvcc_bin ($("$nvcc_bin" --version | grep -o 'release [0-9.]*')) and NCCL found: building with HOROVOD_GPU_OPERATIONS=NCCL"
    else
        say "nvcc found but no NCCL library (gpu extra, ldconfig, HOROVOD_NCCL_HOME): building without GPU operations"
    fi
elif [[ -n $nccl_wheel ]]; then
    say "NCCL wheel found but no CUDA compiler (the pip wheels ship none): building without GPU operations; load a CUDA toolkit (module load cuda) and rerun with --force for NCCL"
fi

log=$build_dir/build.log
say "building the wheel with MAKEFLAGS=$MAKEFLAGS (log: $log)"
start=$SECONDS
if ! (cd "$src" && "$py" -m pip wheel --no-deps --no-build-isolation --no-cache-dir -v \
        -w "$build_dir/dist" .) >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    die "building horovod failed after $((SECONDS - start)) s; full log: $log"
fi
wheel_file=$(ls "$build_dir"/dist/horovod-"$HOROVOD_VERSION"-*.whl)
say "built $(basename "$wheel_file") in $((SECONDS - start)) s"

"$py" -m pip install --quiet --force-reinstall --no-deps "$wheel_file"
"$py" -m pip install --quiet "$wheel_file"  # its Python dependencies, if any are missing
installed_build_ok || die "horovod installed but does not import with TensorFlow support; see $log"
say "installed horovod $HOROVOD_VERSION into $("$py" -c 'import sys; print(sys.executable)')"

check_output=$(TF_CPP_MIN_LOG_LEVEL=3 horovodrun --check-build 2>&1) \
    || { echo "$check_output" >&2; die "horovodrun --check-build failed"; }
# TensorFlow logs a few lines through absl before it reads TF_CPP_MIN_LOG_LEVEL; drop them.
grep -v -E 'absl::InitializeLog|cudart_stub|cpu_feature_guard|rebuild TensorFlow' <<<"$check_output"
