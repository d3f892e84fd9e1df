"""Builders the method and loss tests share."""

from __future__ import annotations

from methods.engine.losses import unlearning_loss
from methods.losses import TERMS


def term(name: str, **knobs):
    """The registered loss term `name` with `knobs` (None for "none")."""
    return None if name == "none" else TERMS[name](**knobs)


def term_loss(forget: str = "ascent", retain: str = "nll", reference=None, ceiling=None, ceiling_scope="answer",
              **knobs):
    """The engine's loss for a forget and a retain term by name, the forget term taking `knobs`."""
    return unlearning_loss(term(forget, **knobs), term(retain), reference, ceiling, ceiling_scope)
