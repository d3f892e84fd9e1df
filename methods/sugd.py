"""SUGD, sequential unlearning with gradient difference (SemEval-2025 Task 4, first place).

The forget set is cut, in file order, into chunks of `method.chunk_size` (the last chunk holds the
remainder). Each chunk is its own phase (fresh optimiser and schedule), trained in order for
`training.epochs` epochs, unshuffled. A chunk's sequence interleaves each forget example with
`method.positive_ratio` retain examples taken cyclically from the retain set, the cursor carrying
over from chunk to chunk:

    [F1, R1..Rp, F2, Rp+1..R2p, ...]

Forget examples have weight 1 (the ascent loss gives -1 x NLL), retain examples `positive_factor`;
the loss is the mean over the global batch of weight x the example's loss. The forget and retain
losses follow method.forget_loss (ascent | npo) and method.retain_loss (nll | kl | none; with none
no retain examples are interleaved).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from methods.engine.phases import check_chunk_size, check_common, chunks, tagged
from methods.engine.settings import UnlearningSettings
from methods.engine.trainer import Phase
from utils.config import BOUNDS, MANY, NON_NEGATIVE, TrainingConfig, up_to
from utils.data.tokenization import Example
from utils.errors import UserError

NAME = "sugd"


@dataclass
class Settings(UnlearningSettings):
    name: str = NAME
    retain_loss: Literal["nll", "kl", "none"] = "nll"
    chunk_size: int = 32  # forget examples per chunk (the last chunk holds the remainder)
    positive_ratio: int = 7  # retain examples interleaved after each forget example
    positive_factor: float = 0.5  # the retain examples' weight


# Each forget example is followed by positive_ratio retain examples: the phase lists grow with it (the seed used 7).
BOUNDS[Settings] = {"chunk_size": up_to(MANY), "positive_ratio": up_to(1_000, low=0), "positive_factor": NON_NEGATIVE}


def loss_kinds(settings: Settings) -> tuple[str, str]:
    return settings.forget_loss, settings.retain_loss


def build_phases(forget: list[Example], retain: list[Example], settings: Settings, training: TrainingConfig,
                 seed: int) -> list[Phase]:
    """One unshuffled phase per chunk; `seed` is unused (the schedule is fully determined by file order)."""
    forget_loss, retain_loss = loss_kinds(settings)
    check_chunk_size(NAME, settings)
    if settings.positive_ratio < 0:
        raise UserError(f"{NAME}: method.positive_ratio must be 0 or more, got {settings.positive_ratio}")
    if settings.positive_factor < 0:
        raise UserError(f"{NAME}: method.positive_factor must be non-negative, got {settings.positive_factor}")
    ratio = settings.positive_ratio if retain_loss != "none" else 0
    check_common(NAME, forget, retain, settings, training, forget_loss, retain_loss, retain_needed=ratio > 0)
    cursor = 0
    phases = []
    for index, chunk in enumerate(chunks(forget, settings.chunk_size)):
        start_cursor = cursor
        examples: list[Example] = []
        for example in chunk:
            examples.append(tagged(example, "forget", 1.0))
            for _ in range(ratio):
                examples.append(tagged(retain[cursor], "retain", settings.positive_factor))
                cursor = (cursor + 1) % len(retain)
        phases.append(Phase(name=f"{NAME}-chunk{index}", examples=examples, epochs=training.epochs, shuffle=False,
                            info={"kind": "chunk", "chunk": index, "retain_cursor": start_cursor}))
    return phases
