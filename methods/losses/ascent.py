"""Gradient ascent: -mean token NLL of the forget answer."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from methods.engine.losses import ForwardView, TermDefaults


@dataclass
class Ascent(TermDefaults):
    loss: str = field(default="ascent", init=False)

    def per_example(self, view: ForwardView, rows: torch.Tensor) -> torch.Tensor:
        return -view.mean_nll
