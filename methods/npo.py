"""NPO, negative preference optimisation on the forget set, with an optional retain term.

method.retain_loss "none" gives plain NPO (forget examples only, reshuffled every epoch); "nll" gives
NPO+RT and "kl" NPO+KL, with gradient-difference batches weighted by method.retain_weight.
"""

from __future__ import annotations

from dataclasses import dataclass

from methods.engine.phases import fixed_forget_loss_phases
from methods.engine.settings import FixedForgetLossSettings
from methods.engine.trainer import Phase
from utils.config import TrainingConfig
from utils.data.tokenization import Example

NAME = "npo"
# What this method always does; a config that states it (as configs once had to) still loads.
FIXED = {"forget_loss": "npo"}


@dataclass
class Settings(FixedForgetLossSettings):
    """The forget loss is NPO's, always: no forget_loss knob."""

    name: str = NAME


def loss_kinds(settings: Settings) -> tuple[str, str]:
    return "npo", settings.retain_loss


def build_phases(forget: list[Example], retain: list[Example], settings: Settings, training: TrainingConfig,
                 seed: int) -> list[Phase]:
    return fixed_forget_loss_phases(NAME, "npo", forget, retain, settings, training, seed)
