"""UNDIAL, self-distillation with adjusted logits (Dong et al. 2024): on each forget answer token, the
cross-entropy from the reference's distribution with the true token's logit lowered by beta to the
model's distribution,

    (1/T) * sum_t CE(softmax(ref_z_t - beta * onehot(y_t)), softmax(z_t))

a fixed, bounded target, so unlearning cannot diverge the way gradient ascent does. The CE differs from
KL(target || model) by the target's entropy, a constant: same gradient. OpenUnlearning averages over all
the batch's positions; here each example averages over its own answer tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from methods.engine.losses import ForwardView, TermDefaults, answer_positions, per_example_mean
from utils.config import POSITIVE, knob


def undial_per_example(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor,
                       beta: float) -> torch.Tensor:
    """UNDIAL's per-example loss (see the module docstring)."""
    answer_logits, targets, example_index, counts = answer_positions(logits, labels)
    ref_answer = ref_logits[:, :-1, :][labels[:, 1:] != -100].float()
    lowered = ref_answer - beta * F.one_hot(targets, ref_answer.size(-1)).to(ref_answer.dtype)
    target = F.softmax(lowered, dim=-1)
    per_token = -(target * F.log_softmax(answer_logits, dim=-1)).sum(dim=-1)
    return per_example_mean(per_token, example_index, counts)


@dataclass
class UNDIAL(TermDefaults):
    loss: str = field(default="undial", init=False)
    beta: float = field(default=10.0, metadata=knob(POSITIVE, "UNDIAL's drop of the true token's reference logit"))
    reference: ClassVar[str | None] = "logits"

    def per_example(self, view: ForwardView, rows: torch.Tensor) -> torch.Tensor:
        ref_logits = view.reference_logits(rows)
        return view.scatter(rows, undial_per_example(view.logits[rows], ref_logits, view.labels[rows], self.beta))
