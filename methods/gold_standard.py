"""Gold standard: the base (pre-memorisation) model fine-tuned on the retain set only.

It is what perfect unlearning would look like, the reference point of every leaderboard. Run it with
`model.name_or_path` set to the base model (for the tiny world: `<workdir>/pretrained`); the forget
set is ignored. Published real-model setting: LoRA r=32, alpha=64, lr 1e-4, 10 epochs.
"""

from __future__ import annotations

from methods.common import loss_for, tagged
from methods.trainer import LossFunction, Phase
from utils.config import MethodConfig, TrainingConfig
from utils.errors import UserError
from utils.tokenization import Example

NAME = "gold_standard"


def loss_kinds(method: MethodConfig) -> tuple[str, str]:
    return "none", "nll"


def build_phases(forget: list[Example], retain: list[Example], method: MethodConfig, training: TrainingConfig,
                 seed: int) -> list[Phase]:
    """One phase: the retain set, reshuffled every epoch."""
    if not retain:
        raise UserError("gold_standard: the retain set is empty")
    examples = [tagged(e, "retain") for e in retain]
    return [Phase(name="gold_standard", examples=examples, epochs=training.epochs, shuffle=True,
                  info={"kind": "descent"})]


def make_loss(method: MethodConfig, reference=None) -> LossFunction:
    return loss_for(*loss_kinds(method), method, reference)
