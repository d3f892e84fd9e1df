"""GA, gradient ascent: maximise the NLL of the forget set (or NPO's loss with forget_loss: npo)."""

from __future__ import annotations

from methods.common import check_common, loss_for, tagged
from methods.trainer import LossFunction, Phase
from utils.config import MethodConfig, TrainingConfig
from utils.tokenization import Example

NAME = "ga"


def loss_kinds(method: MethodConfig) -> tuple[str, str]:
    """(forget loss, retain loss) this method trains with."""
    return method.forget_loss, "none"


def build_phases(forget: list[Example], retain: list[Example], method: MethodConfig, training: TrainingConfig,
                 seed: int) -> list[Phase]:
    """One phase: the forget set, reshuffled every epoch, for `training.epochs` epochs."""
    forget_loss, retain_loss = loss_kinds(method)
    check_common(NAME, forget, retain, method, training, forget_loss, retain_loss, retain_needed=False)
    examples = [tagged(e, "forget") for e in forget]
    return [Phase(name="ga", examples=examples, epochs=training.epochs, shuffle=True, info={"kind": "ascent"})]


def make_loss(method: MethodConfig, reference=None) -> LossFunction:
    return loss_for(*loss_kinds(method), method, reference)
