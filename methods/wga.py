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
from typing import Literal

from methods.engine.phases import check_common, mixed_phase, tagged
from methods.engine.settings import ForgetTermSettings
from methods.engine.trainer import Phase
from utils.config import BOUNDS, NON_NEGATIVE, TrainingConfig
from utils.data.tokenization import Example

NAME = "wga"
FIXED = {"forget_loss": "wga"}


@dataclass
class Settings(ForgetTermSettings):
    """The forget loss is WGA's, always: no forget_loss knob."""

    name: str = NAME
    retain_loss: Literal["nll", "kl", "none"] = "nll"
    retain_weight: float = 1.0


BOUNDS[Settings] = {"retain_weight": NON_NEGATIVE}


def loss_kinds(settings: Settings) -> tuple[str, str]:
    return "wga", settings.retain_loss


def build_phases(forget: list[Example], retain: list[Example], settings: Settings, training: TrainingConfig,
                 seed: int) -> list[Phase]:
    forget_loss, retain_loss = loss_kinds(settings)
    check_common(NAME, forget, retain, settings, training, forget_loss, retain_loss, retain_needed=True)
    if retain_loss == "none":
        examples = [tagged(e, "forget") for e in forget]
        return [Phase(name=NAME, examples=examples, epochs=training.epochs, shuffle=True,
                      info={"kind": "ascent"})]
    return [mixed_phase(NAME, forget, retain, settings.retain_weight, training, seed)]
