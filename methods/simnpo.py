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

from methods.engine.phases import fixed_forget_loss_phases
from methods.engine.settings import FixedForgetLossSettings
from methods.engine.trainer import Phase
from utils.config import TrainingConfig
from utils.data.tokenization import Example

NAME = "simnpo"
FIXED = {"forget_loss": "simnpo"}


@dataclass
class Settings(FixedForgetLossSettings):
    """The forget loss is SimNPO's, always: no forget_loss knob."""

    name: str = NAME


def loss_kinds(settings: Settings) -> tuple[str, str]:
    return "simnpo", settings.retain_loss


def build_phases(forget: list[Example], retain: list[Example], settings: Settings, training: TrainingConfig,
                 seed: int) -> list[Phase]:
    return fixed_forget_loss_phases(NAME, "simnpo", forget, retain, settings, training, seed)
