"""IdkNLL: every forget answer replaced by a refusal ("I don't know" and the like), learnt by plain NLL,
with gradient difference's retain term (TOFU, Maini et al. 2024).

The refusals are the lines of a text file (`method.refusals`, configs/refusals.txt by default; blank
lines and lines starting with # are skipped). Each forget item gets one, chosen by a hash of its id and
training.seed: the same on every process and after a resume, and spread over the templates.
The refusal example keeps the item's prompt tokens exactly and labels the refusal only (tokenised as the
run tokenises every answer, see utils.data.tokenization.encode_pair). In the logs, a forget example's
NLL is therefore its refusal's (it falls as the method works).

Defaults: TOFU's idk loss weighs the refusal and the retain NLL equally (retain_weight 1); gamma, the
forget term's weight in OpenUnlearning, is 1 here (the learning rate scales both terms).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from methods.engine.phases import mixed_phase, tagged
from methods.engine.preference import make_refusal_nll_loss
from methods.engine.trainer import Phase
from utils.config import NON_NEGATIVE, MethodConfig, TrainingConfig, ranged
from utils.data.tokenization import Example
from utils.errors import UserError
from utils.project import project_path

NAME = "idk_nll"
DEFAULT_REFUSALS = "configs/refusals.txt"


@dataclass
class Settings(MethodConfig):
    name: str = NAME
    refusals: str = ranged(DEFAULT_REFUSALS, None, "a file of refusals, one per line (relative to the project "
                                                   "root, or absolute)")
    retain_loss: Literal["nll", "kl", "none"] = ranged("nll", None, "the retain term: nll, kl or none")
    retain_weight: float = ranged(1.0, NON_NEGATIVE, "the retain term's weight against the forget term's")


def load_refusals(path: str) -> list[str]:
    """The refusal templates of the file at `path` (project-relative or absolute); one-line errors."""
    file = project_path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"method.refusals: {file} was not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"method.refusals: cannot read {file} ({type(error).__name__})") from None
    refusals = [line.strip() for line in text.splitlines()]
    refusals = [line for line in refusals if line and not line.startswith("#")]
    if not refusals:
        raise UserError(f"method.refusals: {file} holds no refusal (one per line; blank lines and # comments "
                        "are skipped)")
    return refusals


def choose_refusal(item_id: str, refusals: list[str], seed: int) -> str:
    """The refusal of item `item_id`: a hash, not a random draw, so every process and every resume agree."""
    digest = hashlib.sha256(f"{seed}\0{item_id}".encode()).digest()
    return refusals[int.from_bytes(digest[:8], "big") % len(refusals)]


# encode(item, role, answer=None) -> Example, as the run tokenises (see methods.registry).
Encoder = Callable[..., Example]


def make_examples(items: list, role: str, encode: Encoder, settings: Settings, seed: int) -> list[Example]:
    """Forget items with their answers replaced by refusals; retain items as they are."""
    if role != "forget":
        return [encode(item, role) for item in items]
    refusals = load_refusals(settings.refusals)
    return [encode(item, role, choose_refusal(item.id, refusals, seed)) for item in items]


def loss_kinds(settings: Settings) -> tuple[str, str]:
    return "refusal_nll", settings.retain_loss


def check(name: str, forget: list[Example], retain: list[Example], settings: Settings,
          training: TrainingConfig) -> None:
    """The checks the Idk methods make; each failure is a one-line UserError."""
    if not forget:
        raise UserError(f"{name}: the forget set is empty; there is nothing to unlearn")
    if settings.retain_loss != "none" and not retain:
        raise UserError(f"{name}: the retain set is empty but the method needs it (retain loss "
                        f"'{settings.retain_loss}')")
    if not training.epochs > 0:
        raise UserError(f"{name}: training.epochs must be positive, got {training.epochs}")
    if training.batch_size <= 0:
        raise UserError(f"{name}: training.batch_size must be positive, got {training.batch_size}")


def idk_phases(name: str, forget: list[Example], retain: list[Example], settings: Settings,
               training: TrainingConfig, seed: int) -> list[Phase]:
    """Gradient-difference batches (forget + retain_weight * retain), or the forget examples alone."""
    check(name, forget, retain, settings, training)
    if settings.retain_loss == "none":
        examples = [tagged(e, "forget") for e in forget]
        return [Phase(name=name, examples=examples, epochs=training.epochs, shuffle=True, info={"kind": "refusal"})]
    return [mixed_phase(name, forget, retain, settings.retain_weight, training, seed)]


def build_phases(forget: list[Example], retain: list[Example], settings: Settings, training: TrainingConfig,
                 seed: int) -> list[Phase]:
    return idk_phases(NAME, forget, retain, settings, training, seed)


def needs_reference(settings: Settings) -> bool:
    return settings.retain_loss == "kl"


def make_loss(settings: Settings, reference=None):
    return make_refusal_nll_loss(settings.retain_loss, reference)

