"""GD, gradient difference: forget term + lambda * retain term, lambda = method.retain_weight.

Every global batch holds forget and retain examples in equal numbers (see `methods.engine.phases.mixed_phase`).
The forget term is method.forget (ascent by default; npo, simnpo, wga or undial), the retain term
method.retain (nll, or kl: the KL method). NPO+RT is `forget: npo`, SimNPO `forget: simnpo`, WGA `forget: wga`.
"""

from __future__ import annotations

from dataclasses import dataclass

from methods import terms
from methods.engine.phases import check_common, mixed_phase
from methods.engine.trainer import Phase
from utils.config import NON_NEGATIVE, TrainingConfig, ranged
from utils.data.tokenization import Example

NAME = "gd"


@dataclass
class Settings(terms.ForgetRetainSettings):
    RETAIN_NONE = False  # mixed batches need a retain term: nll or kl

    name: str = NAME
    retain_weight: float = ranged(1.0, NON_NEGATIVE, "lambda: the retain term's weight against the forget term's")


loss_kinds, make_loss, needs_reference = terms.loss_kinds, terms.make_loss, terms.needs_reference


def build_phases(forget: list[Example], retain: list[Example], settings: Settings, training: TrainingConfig,
                 seed: int) -> list[Phase]:
    """One phase of gradient-difference batches."""
    check_common(NAME, forget, retain, training, retain_needed=True, retain_loss=settings.retain.loss)
    return [mixed_phase(NAME, forget, retain, settings.retain_weight, training, seed)]
