"""What the methods built from loss terms share (ga, gd, sugd, agad): the `forget` / `retain` settings, their
parsing from a config (a term name, or a mapping {loss: NAME, KNOB: VALUE}), the loss and the reference.

A method here is a schedule (its `build_phases`) plus named terms and weights; the terms are the modules of
methods/losses/, combined by `methods.engine.losses.unlearning_loss`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from methods.engine.losses import LossTerm, unlearning_loss
from methods.engine.settings import CeilingSettings
from methods.engine.trainer import LossFunction
from methods.losses import TERMS, terms_for
from methods.losses.ascent import Ascent
from methods.losses.nll import NLL
from utils.config import from_dict, knob
from utils.errors import UserError

FORGET_HELP = "the forget term: a name or {loss: NAME, KNOB: VALUE} (the terms and their knobs below)"
RETAIN_HELP = "the retain term: nll, kl or none, or {loss: NAME}"


@dataclass
class ForgetSettings(CeilingSettings):
    """A forget term and its ceiling (a method with no retain term)."""

    forget: LossTerm = field(default_factory=Ascent, metadata=knob(None, FORGET_HELP))


@dataclass
class ForgetRetainSettings(ForgetSettings):
    """A forget term and a retain term."""

    retain: LossTerm | None = field(default_factory=NLL, metadata=knob(None, RETAIN_HELP))


def parse_term(spec: Any, role: str, where: str, allow_none: bool) -> LossTerm | None:
    """The term `spec` names ("npo", {loss: npo, beta: 0.2}, or none/null when `allow_none`), for `role`."""
    if dataclasses.is_dataclass(spec) and not isinstance(spec, type):  # already a term
        return spec
    known = terms_for(role)
    choices = ", ".join([*known, *(["none"] if allow_none else [])])
    if spec is None or spec == "none":
        if allow_none:
            return None
        raise UserError(f"config: {where} must be one of {choices}, got {spec!r}")
    options: dict = {}
    if isinstance(spec, dict):
        if "loss" not in spec:
            raise UserError(f"config: {where} needs loss: NAME beside its knobs (one of {choices})")
        options = {k: v for k, v in spec.items() if k != "loss"}
        spec = spec["loss"]
    if not isinstance(spec, str) or spec not in known:
        raise UserError(f"config: {where}: unknown {role} loss {spec!r} (known: {choices})")
    return from_dict(TERMS[spec], options, where)


def typed_terms(settings_class: type, options: dict, path: str) -> dict:
    """`options` with its `forget` / `retain` specs replaced by term objects (defaults where absent)."""
    fields = {item.name for item in dataclasses.fields(settings_class)}
    out = dict(options)
    if "forget" in out and "forget" in fields:
        out["forget"] = parse_term(out["forget"], "forget", f"{path}.forget", allow_none=False)
    if "retain" in out and "retain" in fields:
        allow_none = getattr(settings_class, "RETAIN_NONE", True)
        out["retain"] = parse_term(out["retain"], "retain", f"{path}.retain", allow_none)
    return out


def loss_kinds(settings: ForgetSettings) -> tuple[str, str]:
    """(forget term, retain term) by name, for logs and plots."""
    retain = getattr(settings, "retain", None)
    return settings.forget.loss, retain.loss if retain is not None else "none"


def terms(settings: ForgetSettings) -> list[LossTerm]:
    return [term for term in (settings.forget, getattr(settings, "retain", None)) if term is not None]


def needs_reference(settings: ForgetSettings) -> bool:
    return any(term.reference for term in terms(settings))


def make_loss(settings: ForgetSettings, reference=None) -> LossFunction:
    """The forget term on forget rows and the retain term on retain rows, with the ceiling."""
    return unlearning_loss(settings.forget, getattr(settings, "retain", None), reference,
                           settings.forget_loss_ceiling, settings.forget_loss_ceiling_scope)
