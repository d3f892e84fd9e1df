"""Gold standard: the base (pre-memorisation) model fine-tuned on the retain set only.

It is what perfect unlearning would look like, the reference point of every leaderboard. Run it with
`model.name_or_path` set to the base model (for the tiny world: `<workdir>/pretrained`); the forget
set is ignored. Published real-model setting: LoRA r=32, alpha=64, lr 1e-4, 10 epochs.
"""

from __future__ import annotations

from dataclasses import dataclass

from methods.engine.losses import unlearning_loss
from methods.engine.phases import tagged
from methods.engine.trainer import LossFunction, Phase
from methods.losses.nll import NLL
from utils.config import MethodConfig, TrainingConfig
from utils.data.tokenization import Example
from utils.errors import UserError

NAME = "gold_standard"


@dataclass
class Settings(MethodConfig):
    """No knobs: plain fine-tuning on the retain set (the training section says how)."""

    name: str = NAME


def loss_kinds(settings: Settings) -> tuple[str, str]:
    return "none", "nll"


def needs_reference(settings: Settings) -> bool:
    return False


def make_loss(settings: Settings, reference=None) -> LossFunction:
    """Plain NLL on the retain examples."""
    return unlearning_loss(None, NLL(), reference)


def build_phases(forget: list[Example], retain: list[Example], settings: Settings, training: TrainingConfig,
                 seed: int) -> list[Phase]:
    """One phase: the retain set, reshuffled every epoch."""
    if not retain:
        raise UserError("gold_standard: the retain set is empty")
    examples = [tagged(e, "retain") for e in retain]
    return [Phase(name="gold_standard", examples=examples, epochs=training.epochs, shuffle=True,
                  info={"kind": "descent"})]
