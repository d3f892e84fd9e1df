"""GD, gradient difference: -NLL(forget) + lambda * NLL(retain), lambda = method.retain_weight.

Every global batch holds forget and retain examples in equal numbers (see `methods.engine.phases.mixed_phase`).
The forget term follows method.forget_loss (ascent, or npo), the retain term method.retain_loss (nll, or
kl: then GD is exactly the KL method, see `methods.kl`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from methods.engine.phases import check_common, mixed_phase
from methods.engine.settings import UnlearningSettings
from methods.engine.trainer import Phase
from utils.config import BOUNDS, NON_NEGATIVE, TrainingConfig
from utils.data.tokenization import Example

NAME = "gd"


@dataclass
class Settings(UnlearningSettings):
    name: str = NAME
    retain_loss: Literal["nll", "kl"] = "nll"
    retain_weight: float = 1.0  # lambda: the retain term's weight against the forget term's


BOUNDS[Settings] = {"retain_weight": NON_NEGATIVE}


def loss_kinds(settings: Settings) -> tuple[str, str]:
    return settings.forget_loss, settings.retain_loss


def gradient_difference_phases(name: str, forget: list[Example], retain: list[Example], settings: Settings,
                               training: TrainingConfig, seed: int) -> list[Phase]:
    """One phase of gradient-difference batches, its phase and messages labelled `name`."""
    forget_loss, retain_loss = loss_kinds(settings)
    check_common(name, forget, retain, settings, training, forget_loss, retain_loss, retain_needed=True)
    return [mixed_phase(name, forget, retain, settings.retain_weight, training, seed)]


def build_phases(forget: list[Example], retain: list[Example], settings: Settings, training: TrainingConfig,
                 seed: int) -> list[Phase]:
    return gradient_difference_phases(NAME, forget, retain, settings, training, seed)
