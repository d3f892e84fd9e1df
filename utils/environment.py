"""Where a number came from: the `environment` block every result file carries.

Two runs agree exactly only on the same lock and the same kind of machine, so every `results.json`,
`prepare_report.json` and benchmark output records the versions, the device, the dtype and the
threads that made it, and the project's version and git commit when there is one.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

from utils.project import PROJECT_ROOT

PACKAGES = ("torch", "transformers", "peft", "accelerate", "tokenizers", "numpy")
DISTRIBUTION = "lume-unlearning"


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def git_commit(root: Path = PROJECT_ROOT) -> str | None:
    """The checkout's commit, with `+dirty` when tracked files differ from it; None outside a git checkout."""
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if dirty else commit


def _model_device_and_dtype(model) -> tuple[str | None, str | None]:
    if model is None:
        return None, None
    parameter = next(iter(model.parameters()), None)
    if parameter is None:
        return None, None
    return str(parameter.device), str(parameter.dtype).removeprefix("torch.")


def describe_environment(model=None, device: str | None = None, dtype: str | None = None) -> dict:
    """The environment block: python, the libraries that decide the numbers, device, dtype, threads, project.

    `model` (when given) supplies the device and dtype its parameters are on; `device`/`dtype` name them
    for results made without a model (e.g. re-scoring generations: both stay None).
    """
    model_device, model_dtype = _model_device_and_dtype(model)
    environment = {
        "python": platform.python_version(),
        **{name: _version(name) for name in PACKAGES},
        "device": device or model_device,
        "device_name": None,
        "dtype": dtype or model_dtype,
        "torch_threads": torch.get_num_threads(),
        # Processes of the launch (accelerate, torchrun set WORLD_SIZE): sharded results can differ from one's.
        "processes": int(os.environ.get("WORLD_SIZE", "1") or 1),
        "cuda": torch.version.cuda,
        "platform": f"{platform.system()}-{platform.machine()}",
        "project_version": _version(DISTRIBUTION),
        "git_commit": git_commit(),
        "executable": sys.executable,
    }
    used = environment["device"]
    if used and used.startswith("cuda") and torch.cuda.is_available():
        environment["device_name"] = torch.cuda.get_device_name(torch.device(used))
    elif used == "cpu":
        environment["device_name"] = platform.processor() or platform.machine()
    return environment
