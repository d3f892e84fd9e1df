"""KL minimisation: -NLL(forget) + lambda * KL(reference || model) on retain, over the output tokens.

Batches as in gradient difference; lambda = method.retain_weight. The reference is the LoRA base
(adapter disabled) or, for full / last-k training, a frozen copy of the model made before training.
"""

from __future__ import annotations

from methods.common import check_common, loss_for, mixed_phase
from methods.trainer import LossFunction, Phase
from utils.config import MethodConfig, TrainingConfig
from utils.tokenization import Example

NAME = "kl"


def loss_kinds(method: MethodConfig) -> tuple[str, str]:
    return method.forget_loss, "kl"


def build_phases(forget: list[Example], retain: list[Example], method: MethodConfig, training: TrainingConfig,
                 seed: int) -> list[Phase]:
    forget_loss, retain_loss = loss_kinds(method)
    check_common(NAME, forget, retain, method, training, forget_loss, retain_loss, retain_needed=True)
    return [mixed_phase(NAME, forget, retain, method.retain_weight, training, seed)]


def make_loss(method: MethodConfig, reference=None) -> LossFunction:
    return loss_for(*loss_kinds(method), method, reference)
