"""The unlearning methods by name. Each module exposes NAME, `loss_kinds(method)`,
`build_phases(forget, retain, method, training, seed) -> list[Phase]` and
`make_loss(method, reference) -> LossFunction`; the Trainer runs the phases in order."""

from __future__ import annotations

from types import ModuleType

from methods import agad, ga, gd, gold_standard, kl, npo, sugd
from methods.losses import Reference, needs_reference
from methods.trainer import Phase
from utils.config import MethodConfig
from utils.errors import UserError

METHODS: dict[str, ModuleType] = {
    "ga": ga,
    "gd": gd,
    "kl": kl,
    "npo": npo,
    "agad": agad,
    "sugd": sugd,
    "gold_standard": gold_standard,
}


def get_method(name: str) -> ModuleType:
    try:
        return METHODS[name]
    except KeyError:
        raise UserError(f"unknown method '{name}' (known: {', '.join(METHODS)})") from None


def prepare_reference(method: MethodConfig, model, adapter_kind: str, phases: list[Phase], tokenizer,
                      batch_size: int = 8, device=None) -> Reference | None:
    """The reference `method` needs (None if none), made from `model` with its adapter applied, BEFORE
    training: for full / last-k training it copies the model (KL) or precomputes the reference
    log-likelihoods of the forget examples in `phases` (NPO)."""
    forget_loss, retain_loss = get_method(method.name).loss_kinds(method)
    if not needs_reference(forget_loss, retain_loss):
        return None
    reference = Reference.for_model(model, adapter_kind)
    reference.prepare(phases, tokenizer, batch_size, device)
    reference.require(forget_loss, retain_loss)
    return reference
