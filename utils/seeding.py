"""One seed for every generator a run draws from, and deterministic kernels where torch has them."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (every device), and ask torch for deterministic algorithms.

    `warn_only`: an operation without a deterministic kernel (some CUDA scatter ops) warns instead of
    stopping a GPU run. cuBLAS's workspace setting, which deterministic matrix products also need, is set
    when the `utils` package is imported (utils/__init__.py): here it would come after a model may already
    have run on the GPU, too late to count.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
