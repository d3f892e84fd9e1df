"""Gradient descent on the retain answer: its mean token NLL."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from methods.engine.losses import ForwardView, TermDefaults


@dataclass
class NLL(TermDefaults):
    loss: str = field(default="nll", init=False)
    role: ClassVar[str] = "retain"

    def per_example(self, view: ForwardView, rows: torch.Tensor) -> torch.Tensor:
        return view.mean_nll
