"""NPO, negative preference optimisation, from sequence log-likelihoods (summed over the answer tokens):

    -(2/beta) * logsigmoid(-beta * (logp - ref_logp))

ref_logp is the reference model's: the LoRA adapter switched off, or precomputed once before training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from methods.engine.losses import ForwardView, TermDefaults
from utils.config import POSITIVE, knob


def npo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-example NPO loss from sequence log-likelihoods."""
    return -(2.0 / beta) * F.logsigmoid(-beta * (logp - ref_logp))


@dataclass
class NPO(TermDefaults):
    loss: str = field(default="npo", init=False)
    beta: float = field(default=0.1, metadata=knob(POSITIVE, "NPO's inverse temperature"))
    reference: ClassVar[str | None] = "sequence_logp"
    token_mean: ClassVar[bool] = False

    def per_example(self, view: ForwardView, rows: torch.Tensor) -> torch.Tensor:
        ref = view.scatter(rows, view.reference.sequence_logp(view.batch, rows))
        return npo_loss(-view.summed_nll, ref, self.beta)
