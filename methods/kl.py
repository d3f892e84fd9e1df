"""KL minimisation: -NLL(forget) + lambda * KL(reference || model) on retain, over the output tokens.

Gradient difference (`methods.gd`) with retain_loss kl: the same settings, phases and loss, only the
retain loss's default differs (so `gd` with `retain_loss: kl` trains exactly like this). Batches as in
gradient difference; lambda = method.retain_weight. The reference is the LoRA base (adapter disabled)
or, for full / last-k training, a frozen copy of the model made before training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from methods import gd
from methods.engine.trainer import Phase
from utils.config import TrainingConfig
from utils.data.tokenization import Example

NAME = "kl"


@dataclass
class Settings(gd.Settings):
    name: str = NAME
    retain_loss: Literal["nll", "kl"] = "kl"


loss_kinds = gd.loss_kinds


def build_phases(forget: list[Example], retain: list[Example], settings: Settings, training: TrainingConfig,
                 seed: int) -> list[Phase]:
    return gd.gradient_difference_phases(NAME, forget, retain, settings, training, seed)
