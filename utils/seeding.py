"""One seed for every generator a run draws from, and deterministic kernels where torch has them."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (every device), and ask torch for deterministic algorithms.

    `warn_only`: an operation without a deterministic kernel (some CUDA scatter ops) warns instead of
    stopping a GPU run. cuBLAS needs its workspace setting for deterministic matrix products; it is read
    when CUDA starts, so it is set only where the user has not set it.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
