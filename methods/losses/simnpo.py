"""SimNPO, NPO without a reference (Fan et al. 2024): length-normalised, with a margin gamma,

    -(2/beta) * logsigmoid(beta * nll_bar - gamma)

nll_bar being the example's mean answer-token NLL. Where OpenUnlearning writes it differently: its
`delta` is gamma / beta (it subtracts delta inside beta * (...)); its forget coefficient (0.125 on TOFU)
is 1 here, the retain term's relative weight being method.retain_weight.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from methods.engine.losses import ForwardView, TermDefaults
from utils.config import NON_NEGATIVE, POSITIVE, knob


def simnpo_loss(mean_nll: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """Per-example SimNPO loss from mean token NLLs."""
    return -(2.0 / beta) * F.logsigmoid(beta * mean_nll - gamma)


@dataclass
class SimNPO(TermDefaults):
    loss: str = field(default="simnpo", init=False)
    beta: float = field(default=4.5, metadata=knob(POSITIVE, "SimNPO's inverse temperature (OpenUnlearning's TOFU value)"))
    gamma: float = field(default=0.0, metadata=knob(NON_NEGATIVE, "SimNPO's margin (OpenUnlearning's delta is gamma / beta)"))
    token_mean: ClassVar[bool] = False

    def per_example(self, view: ForwardView, rows: torch.Tensor) -> torch.Tensor:
        return simnpo_loss(view.mean_nll, self.beta, self.gamma)
