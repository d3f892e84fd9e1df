"""WGA, weighted gradient ascent (Wang et al. 2025, "Rethinking LLM Unlearning Objectives"), with an
optional retain term.

Gradient ascent in which each answer token counts by the model's own probability of it, raised to
beta = method.wga_beta and held constant: -(1/T) * sum_t p_t^beta * nll_t (see `methods.engine.losses`).
Tokens already forgotten (p_t near 0) stop pulling, so ascent does not run away on them; beta 0 is plain
gradient ascent. method.retain_loss "none" gives WGA alone (forget examples only, reshuffled every
epoch); "nll" or "kl" adds the retain term in gradient-difference batches weighted by method.retain_weight.
"""

from __future__ import annotations

from dataclasses import dataclass

from methods.engine.phases import fixed_forget_loss_phases
from methods.engine.settings import FixedForgetLossSettings
from methods.engine.trainer import Phase
from utils.config import TrainingConfig
from utils.data.tokenization import Example

NAME = "wga"
FIXED = {"forget_loss": "wga"}


@dataclass
class Settings(FixedForgetLossSettings):
    """The forget loss is WGA's, always: no forget_loss knob."""

    name: str = NAME


def loss_kinds(settings: Settings) -> tuple[str, str]:
    return "wga", settings.retain_loss


def build_phases(forget: list[Example], retain: list[Example], settings: Settings, training: TrainingConfig,
                 seed: int) -> list[Phase]:
    return fixed_forget_loss_phases(NAME, "wga", forget, retain, settings, training, seed)
