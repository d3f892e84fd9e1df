"""UNDIAL, self-distillation with adjusted logits (Dong et al. 2024), with an optional retain term.

On each forget answer token the model is distilled towards the reference model's distribution with
the true token's logit lowered by beta = method.undial_beta (see `methods.engine.losses`): a fixed,
bounded target, so unlearning cannot diverge the way gradient ascent does. The reference is the LoRA
base (adapter disabled) or, for full / last-k training, a frozen copy of the model made before training.

The paper trains on the forget set alone (its retain weight is 0), hence method.retain_loss defaults to
"none" here (forget examples only, reshuffled every epoch); "nll" or "kl" adds the retain term in
gradient-difference batches weighted by method.retain_weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from methods.engine.phases import fixed_forget_loss_phases
from methods.engine.settings import FixedForgetLossSettings
from methods.engine.trainer import Phase
from utils.config import TrainingConfig
from utils.data.tokenization import Example

NAME = "undial"
FIXED = {"forget_loss": "undial"}


@dataclass
class Settings(FixedForgetLossSettings):
    """The forget loss is UNDIAL's, always: no forget_loss knob. No retain term by default (the paper's)."""

    name: str = NAME
    retain_loss: Literal["nll", "kl", "none"] = "none"


def loss_kinds(settings: Settings) -> tuple[str, str]:
    return "undial", settings.retain_loss


def build_phases(forget: list[Example], retain: list[Example], settings: Settings, training: TrainingConfig,
                 seed: int) -> list[Phase]:
    return fixed_forget_loss_phases(NAME, "undial", forget, retain, settings, training, seed, kind="distillation")
