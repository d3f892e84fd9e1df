#!/usr/bin/env bash
# The suite on today's releases: a fresh venv from the lock, then the libraries that move most upgraded
# to their latest versions, then the README's test command. Not part of CI (the lock is); run it before
# moving the lock forward, and after a release of any of these.
#
#     scripts/test-latest.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONNOUSERSITE=1
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
python3 -m venv "$scratch/venv"
# shellcheck disable=SC1091
source "$scratch/venv/bin/activate"
python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e ".[dev]"
python -m pip install --quiet --disable-pip-version-check -U \
    transformers peft accelerate tokenizers numpy pandas scikit-learn
python - <<'PY'
from importlib import metadata
names = ["torch", "transformers", "peft", "accelerate", "tokenizers", "numpy", "pandas", "scikit-learn"]
print("[latest] " + ", ".join(f"{n} {metadata.version(n)}" for n in names))
PY
python -m pytest -q "$@"
