"""WGA, weighted gradient ascent (Wang et al. 2025): ascent whose answer tokens count by the model's own
probability of them raised to beta, held constant,

    -(1/T) * sum_t p_t^beta * nll_t

so already-forgotten tokens (p_t near 0) stop pulling; beta 0 is plain gradient ascent. OpenUnlearning
averages over all the batch's tokens at once; here each example averages over its own answer tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from methods.engine.losses import ForwardView, TermDefaults, answer_positions, per_example_mean
from utils.config import NON_NEGATIVE, knob


def wga_per_example(logits: torch.Tensor, labels: torch.Tensor, beta: float) -> torch.Tensor:
    """WGA's per-example loss: -mean over answer tokens of p_t^beta * nll_t, the weight p_t^beta detached."""
    answer_logits, targets, example_index, counts = answer_positions(logits, labels)
    token_nll = F.cross_entropy(answer_logits, targets, reduction="none")
    weight = torch.exp(-beta * token_nll.detach())  # p_t ** beta, a constant: the gradient is ascent's, reweighted
    return per_example_mean(-weight * token_nll, example_index, counts)


@dataclass
class WGA(TermDefaults):
    loss: str = field(default="wga", init=False)
    beta: float = field(default=1.0, metadata=knob(NON_NEGATIVE, "WGA's exponent on the token probability weight "
                                                                 "(0: plain gradient ascent)"))

    def per_example(self, view: ForwardView, rows: torch.Tensor) -> torch.Tensor:
        return view.scatter(rows, wga_per_example(view.logits[rows], view.labels[rows], self.beta))
