"""KL(reference || model) over the vocabulary at each retain answer token, averaged over the answer tokens.

The reference is the LoRA base (adapter disabled) or, for full / last-k training, a frozen copy of the
model made before training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from methods.engine.losses import ForwardView, TermDefaults, kl_per_example


@dataclass
class KL(TermDefaults):
    loss: str = field(default="kl", init=False)
    role: ClassVar[str] = "retain"
    reference: ClassVar[str | None] = "logits"

    def per_example(self, view: ForwardView, rows: torch.Tensor) -> torch.Tensor:
        return view.scatter(rows, kl_per_example(view.logits[rows], view.reference_logits(rows), view.labels[rows]))
