"""NPO, negative preference optimisation on the forget set, with an optional retain term.

method.retain_loss "none" gives plain NPO (forget examples only, reshuffled every epoch); "nll" gives
NPO+RT and "kl" NPO+KL, with gradient-difference batches weighted by method.retain_weight.
"""

from __future__ import annotations

from methods.common import check_common, loss_for, mixed_phase, tagged
from methods.trainer import LossFunction, Phase
from utils.config import MethodConfig, TrainingConfig
from utils.tokenization import Example

NAME = "npo"


def loss_kinds(method: MethodConfig) -> tuple[str, str]:
    return "npo", method.retain_loss


def build_phases(forget: list[Example], retain: list[Example], method: MethodConfig, training: TrainingConfig,
                 seed: int) -> list[Phase]:
    forget_loss, retain_loss = loss_kinds(method)
    check_common(NAME, forget, retain, method, training, forget_loss, retain_loss, retain_needed=True)
    if retain_loss == "none":
        examples = [tagged(e, "forget") for e in forget]
        return [Phase(name=NAME, examples=examples, epochs=training.epochs, shuffle=True, info={"kind": "ascent"})]
    return [mixed_phase(NAME, forget, retain, method.retain_weight, training, seed)]


def make_loss(method: MethodConfig, reference=None) -> LossFunction:
    return loss_for(*loss_kinds(method), method, reference)
