"""The loss terms a method combines, one module each, by name (`method.forget` / `method.retain` in a config).

A term is a dataclass with only its own knobs (bounds and help in the fields' metadata) that follows
`methods.engine.losses.LossTerm`; `methods.engine.losses.unlearning_loss` puts a forget and a retain term
together. Adding a term is its module and one line in the list below.
"""

from __future__ import annotations

import dataclasses
from importlib import import_module

from methods.engine.losses import LossTerm

TERMS: dict[str, type] = {}


def register_term(term: type) -> type:
    """Make the dataclass `term` selectable by its `loss` name; a malformed term is a programming error."""
    if not dataclasses.is_dataclass(term):
        raise TypeError(f"loss term {term.__name__} must be a dataclass")
    if not isinstance(term(), LossTerm):
        raise TypeError(f"loss term {term.__name__} does not follow methods.engine.losses.LossTerm "
                        "(loss, role, reference, token_mean, per_example)")
    if term.role not in ("forget", "retain"):
        raise ValueError(f"loss term {term.__name__}: role must be forget or retain, got {term.role!r}")
    name = term().loss
    if TERMS.get(name, term) is not term:
        raise ValueError(f"a loss term named {name!r} is already registered ({TERMS[name].__name__})")
    TERMS[name] = term
    return term


def unregister_term(name: str) -> None:
    TERMS.pop(name, None)


def terms_for(role: str) -> list[str]:
    """The names of the registered terms for `role` ("forget" or "retain")."""
    return [name for name, term in TERMS.items() if term.role == role]


# The built-in terms, one line each ("module:Class"): adding a term is its module and a line here.
for _entry in (
    "methods.losses.ascent:Ascent",
    "methods.losses.npo:NPO",
    "methods.losses.simnpo:SimNPO",
    "methods.losses.wga:WGA",
    "methods.losses.undial:UNDIAL",
    "methods.losses.nll:NLL",
    "methods.losses.kl:KL",
):
    _module, _class = _entry.split(":")
    register_term(getattr(import_module(_module), _class))
