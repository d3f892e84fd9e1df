"""Pieces the method modules share: validation, chunking, role/weight tagging and the mixed
forget+retain batches of gradient difference, KL and NPO+RT."""

from __future__ import annotations

import dataclasses
import math

import torch

from methods.engine.losses import make_unlearning_loss
from methods.engine.settings import ForgetTermSettings
from methods.engine.trainer import LossFunction, Phase
from utils.config import MethodConfig, TrainingConfig
from utils.data.tokenization import Example
from utils.errors import UserError


def tagged(example: Example, role: str, weight: float = 1.0) -> Example:
    """A shallow copy of `example` with its role and weight set (token lists are shared, not copied)."""
    return dataclasses.replace(example, role=role, weight=float(weight))


def check_common(name: str, forget: list[Example], retain: list[Example], method: ForgetTermSettings,
                 training: TrainingConfig, forget_loss: str, retain_loss: str, retain_needed: bool) -> None:
    """The checks every method makes; each failure is a one-line UserError."""
    if not forget:
        raise UserError(f"{name}: the forget set is empty; there is nothing to unlearn")
    if retain_needed and retain_loss != "none" and not retain:
        raise UserError(f"{name}: the retain set is empty but the method needs it (retain loss '{retain_loss}')")
    if forget_loss == "npo" and not method.npo_beta > 0:
        raise UserError(f"{name}: method.npo_beta must be positive, got {method.npo_beta}")
    # The new losses' knobs, each checked when its loss is the one chosen (settings may lack the others).
    for loss, knob, positive in (("simnpo", "simnpo_beta", True), ("simnpo", "simnpo_gamma", False),
                                 ("wga", "wga_beta", False), ("undial", "undial_beta", True)):
        value = getattr(method, knob, None)
        if forget_loss == loss and value is not None and not (value > 0 if positive else value >= 0):
            raise UserError(f"{name}: method.{knob} must be {'positive' if positive else 'non-negative'}, "
                            f"got {value}")
    if method.forget_loss_ceiling is not None and not method.forget_loss_ceiling > 0:
        raise UserError(f"{name}: method.forget_loss_ceiling must be positive (or null), got {method.forget_loss_ceiling}")
    if not training.epochs > 0:
        raise UserError(f"{name}: training.epochs must be positive, got {training.epochs}")
    if training.batch_size <= 0:
        raise UserError(f"{name}: training.batch_size must be positive, got {training.batch_size}")


def check_chunk_size(name: str, method) -> None:
    """`method.chunk_size` is a positive integer (for the settings of a chunked method)."""
    if method.chunk_size <= 0:
        raise UserError(f"{name}: method.chunk_size must be a positive integer, got {method.chunk_size}")


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
    if retain_weight < 0:
        raise UserError(f"{name}: method.retain_weight must be non-negative, got {retain_weight}")
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


def fixed_forget_loss_phases(name: str, forget_loss: str, forget: list[Example], retain: list[Example], settings,
                             training: TrainingConfig, seed: int, kind: str = "ascent") -> list[Phase]:
    """The phases of a method with a fixed forget loss (`FixedForgetLossSettings`): with retain_loss "none"
    the forget examples alone, reshuffled every epoch; else gradient-difference batches weighted by
    settings.retain_weight."""
    check_common(name, forget, retain, settings, training, forget_loss, settings.retain_loss, retain_needed=True)
    if settings.retain_loss == "none":
        examples = [tagged(e, "forget") for e in forget]
        return [Phase(name=name, examples=examples, epochs=training.epochs, shuffle=True, info={"kind": kind})]
    return [mixed_phase(name, forget, retain, settings.retain_weight, training, seed)]


# Settings attribute -> make_unlearning_loss argument; a setting a method does not declare keeps the default.
LOSS_KNOBS = {"npo_beta": "npo_beta", "forget_loss_ceiling": "forget_loss_ceiling",
              "forget_loss_ceiling_scope": "ceiling_scope", "simnpo_beta": "simnpo_beta",
              "simnpo_gamma": "simnpo_gamma", "wga_beta": "wga_beta", "undial_beta": "undial_beta"}


def loss_for(forget_loss: str, retain_loss: str, method: MethodConfig, reference) -> LossFunction:
    """The loss for (forget loss, retain loss) with the knobs `method` declares: the engine's default
    `make_loss` (see `methods.registry.make_loss`)."""
    knobs = {argument: getattr(method, key) for key, argument in LOSS_KNOBS.items() if hasattr(method, key)}
    return make_unlearning_loss(forget_loss=forget_loss, retain_loss=retain_loss, reference=reference, **knobs)
