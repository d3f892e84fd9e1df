"""GD, gradient difference: -NLL(forget) + lambda * NLL(retain), lambda = method.retain_weight.

Every global batch holds forget and retain examples in equal numbers (see `methods.common.mixed_phase`).
The forget term follows method.forget_loss (ascent, or npo).
"""

from __future__ import annotations

from methods.common import check_common, loss_for, mixed_phase
from methods.trainer import LossFunction, Phase
from utils.config import MethodConfig, TrainingConfig
from utils.tokenization import Example

NAME = "gd"


def loss_kinds(method: MethodConfig) -> tuple[str, str]:
    return method.forget_loss, "nll"


def build_phases(forget: list[Example], retain: list[Example], method: MethodConfig, training: TrainingConfig,
                 seed: int) -> list[Phase]:
    forget_loss, retain_loss = loss_kinds(method)
    check_common(NAME, forget, retain, method, training, forget_loss, retain_loss, retain_needed=True)
    return [mixed_phase(NAME, forget, retain, method.retain_weight, training, seed)]


def make_loss(method: MethodConfig, reference=None) -> LossFunction:
    return loss_for(*loss_kinds(method), method, reference)
