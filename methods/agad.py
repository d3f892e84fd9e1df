"""AGAD, alternating gradient ascent-descent.

The forget set is cut, in file order, into chunks of `method.chunk_size` (+ a remainder chunk). For
each chunk, a gradient-ascent phase on it (shuffled each epoch); after every 1/interleaving_factor
chunks, an annealing phase of gradient descent on `annealing_fraction` of the retain set (a seeded
random subset, a different one for every annealing phase); after the last chunk, when
`final_annealing` is on, a final annealing phase on the whole retain set. Every phase trains for
`training.epochs` epochs with a fresh optimiser and schedule (the Trainer's per-phase behaviour).

Reading of the interleaving factor f > 0: after chunk number n (1-based), floor(n * f) - floor((n - 1) * f)
annealing phases follow. f = 1 anneals after every chunk, f = 0.5 after every 2nd chunk (2, 4, ...),
f = 1/3 after every 3rd, f = 2 twice (two different subsets) after every chunk. As in the seed, the
rule counts full chunks only: a remainder chunk (shorter than chunk_size) is followed by the final
annealing alone, unless `anneal_after_remainder` (the other reading of the rule) gives it the rule's
annealing phases too.

The ascent phases use method.forget (ascent, npo, simnpo, wga, undial); the annealing phases method.retain
(nll, i.e. gradient descent, or kl towards the reference); retain none is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from methods import terms
from methods.engine.phases import check_common, chunks, tagged
from methods.engine.trainer import Phase
from utils.config import MANY, Bound, TrainingConfig, ranged, up_to
from utils.data.tokenization import Example

NAME = "agad"


@dataclass
class Settings(terms.ForgetRetainSettings):
    RETAIN_NONE = False  # the annealing phases need a retain term: nll or kl

    name: str = NAME
    chunk_size: int = ranged(32, up_to(MANY), "forget examples per ascent phase (the last holds the remainder)")
    # interleaving_factor annealing phases follow each chunk: the phase list grows with it.
    interleaving_factor: float = ranged(1.0, Bound(low=0, low_open=True, high=1_000, generous=True),
                                        "annealing phases per chunk (0.5: after every 2nd chunk)")
    annealing_fraction: float = ranged(0.25, Bound(low=0, low_open=True, high=1),
                                       "the share of the retain set each annealing phase trains on")
    final_annealing: bool = ranged(True, None, "a last annealing phase on the whole retain set")
    anneal_after_remainder: bool = ranged(False, None, "a remainder chunk is followed by the rule's annealing "
                                                       "phases too (false: the seed's schedule)")


loss_kinds, make_loss, needs_reference = terms.loss_kinds, terms.make_loss, terms.needs_reference


def anneals_after(chunk_number: int, factor: float) -> int:
    """How many annealing phases follow chunk `chunk_number` (1-based) for interleaving factor `factor`."""
    eps = 1e-9  # 3 * (1/3) must count as 1
    return math.floor(chunk_number * factor + eps) - math.floor((chunk_number - 1) * factor + eps)


def annealing_subset(retain: list[Example], fraction: float, seed: int, index: int) -> list[Example]:
    """A seeded random subset (in file order) of round(fraction * len) retain examples, at least one."""
    size = min(len(retain), max(1, round(fraction * len(retain))))
    generator = torch.Generator().manual_seed(seed * 1_000_003 + 7919 * (index + 1))
    chosen = sorted(torch.randperm(len(retain), generator=generator)[:size].tolist())
    return [retain[i] for i in chosen]


def build_phases(forget: list[Example], retain: list[Example], settings: Settings, training: TrainingConfig,
                 seed: int) -> list[Phase]:
    pieces = chunks(forget, settings.chunk_size) if forget else []
    anneal_counts = [anneals_after(n, settings.interleaving_factor)
                     if len(piece) == settings.chunk_size or settings.anneal_after_remainder else 0
                     for n, piece in enumerate(pieces, start=1)]
    needs_retain = sum(anneal_counts) > 0 or settings.final_annealing
    check_common(NAME, forget, retain, training, retain_needed=needs_retain, retain_loss=loss_kinds(settings)[1])

    phases: list[Phase] = []
    anneal_index = 0
    for index, chunk in enumerate(pieces):
        phases.append(Phase(name=f"{NAME}-chunk{index}-ascent", examples=[tagged(e, "forget") for e in chunk],
                            epochs=training.epochs, shuffle=True, info={"kind": "ascent", "chunk": index}))
        for _ in range(anneal_counts[index]):
            subset = annealing_subset(retain, settings.annealing_fraction, seed, anneal_index)
            phases.append(Phase(name=f"{NAME}-chunk{index}-anneal{anneal_index}",
                                examples=[tagged(e, "retain") for e in subset], epochs=training.epochs,
                                shuffle=True, info={"kind": "anneal", "chunk": index, "anneal": anneal_index}))
            anneal_index += 1
    if settings.final_annealing:
        phases.append(Phase(name=f"{NAME}-final-anneal", examples=[tagged(e, "retain") for e in retain],
                            epochs=training.epochs, shuffle=True,
                            info={"kind": "final_anneal", "chunk": len(pieces) - 1}))
    return phases
