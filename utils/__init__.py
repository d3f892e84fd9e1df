"""Shared building blocks: data, models, metrics, evaluation, configuration and the CLI."""

import os

# Deterministic cuBLAS matrix products need this workspace setting, and cuBLAS reads it once, when CUDA first
# runs one: so it is set when the library is first imported (`unlearn`, a notebook, a script), before any model
# can reach a GPU. A value the user set is kept.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
