"""SUGD, sequential unlearning with gradient difference (SemEval-2025 Task 4, first place).

The forget set is cut, in file order, into chunks of `method.chunk_size` (the last chunk holds the
remainder). Each chunk is its own phase (fresh optimiser and schedule), trained in order for
`training.epochs` epochs, unshuffled. A chunk's sequence interleaves each forget example with
`method.positive_ratio` retain examples taken cyclically from the retain set, the cursor carrying
over from chunk to chunk:

    [F1, R1..Rp, F2, Rp+1..R2p, ...]

Forget examples have weight 1 (the ascent loss gives -1 x NLL), retain examples `positive_factor`;
the loss is the mean over the global batch of weight x the example's loss. The forget and retain
terms are method.forget (ascent, npo, simnpo, wga, undial) and method.retain (nll | kl | none; with none
no retain examples are interleaved).
"""

from __future__ import annotations

from dataclasses import dataclass

from methods import terms
from methods.engine.phases import check_common, chunks, tagged
from methods.engine.trainer import Phase
from utils.config import MANY, NON_NEGATIVE, TrainingConfig, ranged, up_to
from utils.data.tokenization import Example

NAME = "sugd"


@dataclass
class Settings(terms.ForgetRetainSettings):
    name: str = NAME
    chunk_size: int = ranged(32, up_to(MANY), "forget examples per chunk (the last chunk holds the remainder)")
    # Each forget example is followed by positive_ratio retain examples: the phase lists grow with it.
    positive_ratio: int = ranged(7, up_to(1_000, low=0), "retain examples interleaved after each forget example")
    positive_factor: float = ranged(0.5, NON_NEGATIVE, "the retain examples' weight")


loss_kinds, make_loss, needs_reference = terms.loss_kinds, terms.make_loss, terms.needs_reference


def build_phases(forget: list[Example], retain: list[Example], settings: Settings, training: TrainingConfig,
                 seed: int) -> list[Phase]:
    """One unshuffled phase per chunk; `seed` is unused (the schedule is fully determined by file order)."""
    retain_loss = loss_kinds(settings)[1]
    ratio = settings.positive_ratio if settings.retain is not None else 0
    check_common(NAME, forget, retain, training, retain_needed=ratio > 0, retain_loss=retain_loss)
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
