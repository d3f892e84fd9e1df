"""Pieces the method modules share: validation, chunking, role/weight tagging and the mixed
forget+retain batches of gradient difference."""

from __future__ import annotations

import dataclasses
import math

import torch

from methods.engine.trainer import Phase
from utils.config import TrainingConfig
from utils.data.tokenization import Example
from utils.errors import UserError


def tagged(example: Example, role: str, weight: float = 1.0) -> Example:
    """A shallow copy of `example` with its role and weight set (token lists are shared, not copied)."""
    return dataclasses.replace(example, role=role, weight=float(weight))


def check_common(name: str, forget: list[Example], retain: list[Example], training: TrainingConfig,
                 retain_needed: bool, retain_loss: str = "") -> None:
    """The checks every method makes that are not ranges (those are the config's); each failure is a one-line
    UserError. `retain_loss` names the retain term in the message."""
    if not forget:
        raise UserError(f"{name}: the forget set is empty; there is nothing to unlearn")
    if retain_needed and not retain:
        raise UserError(f"{name}: the retain set is empty but the method needs it (retain loss '{retain_loss}')")
    if not training.epochs > 0:
        raise UserError(f"{name}: training.epochs must be positive, got {training.epochs}")
    if training.batch_size <= 0:
        raise UserError(f"{name}: training.batch_size must be positive, got {training.batch_size}")


def chunks(items: list, size: int) -> list[list]:
    """`items` in order, cut into pieces of `size` (the last one holds the remainder)."""
    return [items[start:start + size] for start in range(0, len(items), size)]


def seeded_permutations(count: int, seed: int):
    """An endless stream of indices: successive seeded permutations of range(count)."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        yield from torch.randperm(count, generator=generator).tolist()


def mixed_phase(name: str, forget: list[Example], retain: list[Example], retain_weight: float,
                training: TrainingConfig, seed: int, info: dict | None = None) -> Phase:
    """Gradient-difference batches: every global batch holds forget and retain examples in (nearly)
    equal numbers, weighted so that the batch loss is mean(forget loss) + retain_weight * mean(retain loss).

    The forget stream is `training.epochs` passes over the forget set, each pass a fresh seeded
    permutation; retain examples are drawn cyclically from seeded permutations of the retain set.
    A batch of B examples holds ceil(B/2) forget and floor(B/2) retain; the last one holds what is
    left of the forget stream with as many retain examples (at least one). The phase is laid out
    batch by batch, unshuffled, as one pass (the Trainer cuts it into the same batches).
    """
    size = training.batch_size
    if size < 2:
        raise UserError(f"{name}: training.batch_size must be at least 2 so every batch holds forget and retain "
                        f"examples, got {size} (sugd interleaves them with batch size 1)")
    per_forget = math.ceil(size / 2)
    per_retain = size - per_forget
    total = math.ceil(training.epochs * len(forget))
    forget_order = seeded_permutations(len(forget), seed * 1_000_003 + 1)
    retain_order = seeded_permutations(len(retain), seed * 1_000_003 + 2)
    stream = [forget[next(forget_order)] for _ in range(total)]
    examples: list[Example] = []
    for start in range(0, total, per_forget):
        group = stream[start:start + per_forget]
        n_retain = per_retain if len(group) == per_forget else max(1, round(len(group) * per_retain / per_forget))
        length = len(group) + n_retain
        examples += [tagged(e, "forget", length / len(group)) for e in group]
        examples += [tagged(retain[next(retain_order)], "retain", retain_weight * length / n_retain)
                     for _ in range(n_retain)]
    return Phase(name=name, examples=examples, epochs=1, shuffle=False,
                 info={"kind": "mixed", "epochs": training.epochs, **(info or {})})
