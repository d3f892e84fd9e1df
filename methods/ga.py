"""GA, gradient ascent: the forget term (method.forget: ascent by default, or npo, simnpo, wga, undial) on the
forget set alone. `method.forget: npo` is NPO, `undial` UNDIAL as its paper trains it (no retain term)."""

from __future__ import annotations

from dataclasses import dataclass

from methods import terms
from methods.engine.phases import check_common, tagged
from methods.engine.trainer import Phase
from utils.config import TrainingConfig
from utils.data.tokenization import Example

NAME = "ga"
# What this method always does; a config that states it still loads.
FIXED = {"retain": "none"}


@dataclass
class Settings(terms.ForgetSettings):
    """The forget term and its ceiling only: GA has no retain term."""

    name: str = NAME


loss_kinds, make_loss, needs_reference = terms.loss_kinds, terms.make_loss, terms.needs_reference


def build_phases(forget: list[Example], retain: list[Example], settings: Settings, training: TrainingConfig,
                 seed: int) -> list[Phase]:
    """One phase: the forget set, reshuffled every epoch, for `training.epochs` epochs."""
    check_common(NAME, forget, retain, training, retain_needed=False)
    examples = [tagged(e, "forget") for e in forget]
    kind = "distillation" if settings.forget.loss == "undial" else "ascent"
    return [Phase(name="ga", examples=examples, epochs=training.epochs, shuffle=True, info={"kind": kind})]
