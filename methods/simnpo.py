"""SimNPO, simple (reference-free) negative preference optimisation on the forget set (Fan et al. 2024),
with an optional retain term.

The forget loss is NPO's with the reference log-likelihood replaced by a length normalisation and a
margin: -(2/beta) * logsigmoid(beta * mean token NLL - gamma), beta = method.simnpo_beta, gamma =
method.simnpo_gamma (see `methods.engine.losses`). No reference model is needed. method.retain_loss
"none" gives SimNPO alone (forget examples only, reshuffled every epoch); "nll" or "kl" adds the retain
term in gradient-difference batches weighted by method.retain_weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from methods.engine.phases import check_common, mixed_phase, tagged
from methods.engine.settings import ForgetTermSettings
from methods.engine.trainer import Phase
from utils.config import BOUNDS, NON_NEGATIVE, TrainingConfig
from utils.data.tokenization import Example

NAME = "simnpo"
FIXED = {"forget_loss": "simnpo"}


@dataclass
class Settings(ForgetTermSettings):
    """The forget loss is SimNPO's, always: no forget_loss knob."""

    name: str = NAME
    retain_loss: Literal["nll", "kl", "none"] = "nll"
    retain_weight: float = 1.0


BOUNDS[Settings] = {"retain_weight": NON_NEGATIVE}


def loss_kinds(settings: Settings) -> tuple[str, str]:
    return "simnpo", settings.retain_loss


def build_phases(forget: list[Example], retain: list[Example], settings: Settings, training: TrainingConfig,
                 seed: int) -> list[Phase]:
    forget_loss, retain_loss = loss_kinds(settings)
    check_common(NAME, forget, retain, settings, training, forget_loss, retain_loss, retain_needed=True)
    if retain_loss == "none":
        examples = [tagged(e, "forget") for e in forget]
        return [Phase(name=NAME, examples=examples, epochs=training.epochs, shuffle=True,
                      info={"kind": "ascent"})]
    return [mixed_phase(NAME, forget, retain, settings.retain_weight, training, seed)]
