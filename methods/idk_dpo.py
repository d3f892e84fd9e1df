"""IdkDPO: DPO with a refusal as the preferred answer and the original forget answer as the rejected
one, with gradient difference's retain term (TOFU, Maini et al. 2024; defaults from OpenUnlearning's
DPO trainer: beta 0.1, forget and retain weights 1, retain NLL).

Each forget example is the original question and answer, paired (`Example.pair_input_ids`) with the same
prompt followed by its refusal, chosen as in methods.idk_nll (method.refusals, a hash of the item id).
The loss is in methods.engine.preference; the reference log-likelihoods of both sequences come from
the LoRA adapter switched off, or are precomputed before training for full / last-k training.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from methods.engine.preference import make_dpo_loss
from methods.engine.trainer import Phase
from methods.idk_nll import Encoder, choose_refusal, idk_phases, load_refusals
from methods.idk_nll import Settings as IdkSettings
from utils.config import POSITIVE, TrainingConfig, ranged
from utils.data.tokenization import Example

NAME = "idk_dpo"


@dataclass
class Settings(IdkSettings):
    name: str = NAME
    dpo_beta: float = ranged(0.1, POSITIVE, "DPO's beta: how far from the reference the preference may move the "
                                            "model")


def make_examples(items: list, role: str, encode: Encoder, settings: Settings, seed: int) -> list[Example]:
    """Forget items as their original answer paired with their refusal; retain items as they are."""
    if role != "forget":
        return [encode(item, role) for item in items]
    refusals = load_refusals(settings.refusals)
    examples = []
    for item in items:
        refusal = encode(item, role, choose_refusal(item.id, refusals, seed))
        examples.append(dataclasses.replace(encode(item, role), pair_input_ids=refusal.input_ids,
                                            pair_labels=refusal.labels))
    return examples


def loss_kinds(settings: Settings) -> tuple[str, str]:
    return "dpo", settings.retain_loss


def needs_reference(settings: Settings) -> bool:
    return True  # DPO compares with the reference on every forget example


def build_phases(forget: list[Example], retain: list[Example], settings: Settings, training: TrainingConfig,
                 seed: int) -> list[Phase]:
    return idk_phases(NAME, forget, retain, settings, training, seed)


def make_loss(settings: Settings, reference=None):
    return make_dpo_loss(settings.dpo_beta, settings.retain_loss, reference)
