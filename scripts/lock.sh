#!/usr/bin/env bash
# Regenerate requirements.lock: exact versions of every runtime, dev and notebooks dependency, resolved
# from pyproject.toml's ranges for Python 3.11 on x86-64 Linux (torch's CUDA libraries included, so a GPU
# box installs the same lock; a CPU box installs torch's CPU build of the same release and skips them).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet "uv>=0.5"
uv pip compile pyproject.toml --extra dev --extra notebooks --python-version 3.11 \
    --python-platform x86_64-manylinux_2_28 \
    --upgrade --custom-compile-command "scripts/lock.sh" -o requirements.lock
