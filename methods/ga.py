"""GA, gradient ascent: maximise the NLL of the forget set (or NPO's loss with forget_loss: npo)."""

from __future__ import annotations

from dataclasses import dataclass

from methods.engine.phases import check_common, tagged
from methods.engine.settings import UnlearningSettings
from methods.engine.trainer import Phase
from utils.config import TrainingConfig
from utils.data.tokenization import Example

NAME = "ga"
# What this method always does; a config that states it (as configs once had to) still loads.
FIXED = {"retain_loss": "none"}


@dataclass
class Settings(UnlearningSettings):
    """The forget loss's knobs only: GA has no retain term."""

    name: str = NAME


def loss_kinds(settings: Settings) -> tuple[str, str]:
    """(forget loss, retain loss) this method trains with."""
    return settings.forget_loss, "none"


def build_phases(forget: list[Example], retain: list[Example], settings: Settings, training: TrainingConfig,
                 seed: int) -> list[Phase]:
    """One phase: the forget set, reshuffled every epoch, for `training.epochs` epochs."""
    forget_loss, retain_loss = loss_kinds(settings)
    check_common(NAME, forget, retain, settings, training, forget_loss, retain_loss, retain_needed=False)
    examples = [tagged(e, "forget") for e in forget]
    return [Phase(name="ga", examples=examples, epochs=training.epochs, shuffle=True, info={"kind": "ascent"})]
