#!/usr/bin/env bash
# The quick tier (no SLURM, no training runs, no Horovod) on the other Pythons that TensorFlow
# 2.21 ships wheels for: one venv per version, the project installed there (editable) with its
# [train,test,s3] extras, then pytest. The interpreters are pyenv's ($PYENV_ROOT/versions).
#
#   tests/other_pythons.sh [VERSION ...]     # default: 3.12 3.13 (the suite itself runs on 3.11)
#
# The venvs live in the checkout's build/ folder ($OTHER_PYTHONS_VENVS, default build/venvs), so
# nothing is kept outside it: a fresh clone (CI) installs TensorFlow for each version (about 600 MB,
# minutes per version); a second run in the same checkout only checks the install.
set -euo pipefail
cd "$(dirname "$0")/.."
(($#)) || set -- 3.12 3.13
QUICK_TIER="not slurm and not slow and not horovod"

for version in "$@"; do
    python=$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}/versions/$version".*/bin/python 2>/dev/null | sort -V | tail -n 1)
    [[ -n "$python" ]] ||
        { echo "other_pythons: no Python $version in pyenv; install it with: pyenv install $version" >&2; exit 1; }
    full=$("$python" -c 'import platform; print(platform.python_version())')
    venv="${OTHER_PYTHONS_VENVS:-$PWD/build/venvs}/py$version"
    echo "== Python $full: venv $venv"
    [[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
    start=$SECONDS
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".[train,test,s3]"
    echo "== Python $full: installed in $((SECONDS - start)) s; quick tier"
    "$venv/bin/python" -m pytest -q -p no:cacheprovider -n 2 --dist loadgroup -m "$QUICK_TIER"
done
