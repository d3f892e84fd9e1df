"""The unlearning methods by name.

A method is one module that exposes
    NAME                                                the name configs select it by (`method.name`)
    Settings                                            its settings: a dataclass subclassing
                                                        utils.config.MethodConfig, with only the knobs it reads
    loss_kinds(settings) -> (forget loss, retain loss)  e.g. ("ascent", "nll"); see methods.engine.losses
    build_phases(forget, retain, settings, training, seed) -> list[Phase]
and optionally
    make_loss(settings, reference) -> LossFunction      default: the engine's loss for `loss_kinds`, with the
                                                        settings' npo_beta / forget_loss_ceiling /
                                                        forget_loss_ceiling_scope when declared
    needs_reference(settings) -> bool                   whether `make_loss` gets a Reference (default: the
                                                        engine's `needs_reference` on `loss_kinds`)
    make_examples(items, role, encode, settings, seed)  its own training examples of the forget or retain
        -> list[Example]                                items (default: [encode(item, role) for item in
                                                        items]); encode(item, role, answer=None) is the
                                                        run's tokenisation, with `answer` replacing the
                                                        item's (IdkNLL's refusals), and gives token-less
                                                        stand-ins in a dry run without a tokenizer.
Adding a method is that module, a YAML file in configs/ and one line in the list below.
A setting the method does not have but whose value it always takes (`FIXED`, e.g. ga's `retain_loss:
none`) is accepted when it says that value, so configs written before the settings were per method load.
"""

from __future__ import annotations

import dataclasses
from importlib import import_module
from types import ModuleType

from methods.engine.losses import Reference, needs_reference
from methods.engine.phases import loss_for
from methods.engine.trainer import LossFunction, Phase
from utils.config import MethodConfig
from utils.errors import UserError

METHODS: dict[str, ModuleType] = {}
REQUIRED = ("NAME", "Settings", "loss_kinds", "build_phases")


def register(module: ModuleType) -> ModuleType:
    """Make `module` selectable as `method.name: <module.NAME>`; checks the interface (a mistake in a
    method module is a programming error: TypeError / ValueError)."""
    missing = [attribute for attribute in REQUIRED if not hasattr(module, attribute)]
    if missing:
        raise TypeError(f"method module {module.__name__} lacks {', '.join(missing)}")
    settings = module.Settings
    if not (isinstance(settings, type) and issubclass(settings, MethodConfig) and dataclasses.is_dataclass(settings)):
        raise TypeError(f"{module.__name__}.Settings must be a dataclass subclassing utils.config.MethodConfig")
    if settings().name != module.NAME:
        raise ValueError(f"{module.__name__}.Settings: name must default to NAME ({module.NAME!r})")
    if METHODS.get(module.NAME, module) is not module:
        raise ValueError(f"a method named {module.NAME!r} is already registered ({METHODS[module.NAME].__name__})")
    METHODS[module.NAME] = module
    return module


def unregister(name: str) -> None:
    METHODS.pop(name, None)


# The built-in methods, one line each: adding a method is its module, its YAML and a line here.
for _module in (
    "methods.ga",
    "methods.gd",
    "methods.kl",
    "methods.npo",
    "methods.agad",
    "methods.sugd",
    "methods.gold_standard",
    "methods.simnpo",
    "methods.wga",
    "methods.undial",
    "methods.rmu",
    "methods.idk_nll",
    "methods.idk_dpo",
):
    register(import_module(_module))


def get_method(name: str) -> ModuleType:
    try:
        return METHODS[name]
    except KeyError:
        raise UserError(f"unknown method '{name}' (known: {', '.join(METHODS)})") from None


def make_loss(settings: MethodConfig, reference: Reference | None = None) -> LossFunction:
    """The loss of the method `settings` belong to: its own `make_loss` if it has one, else the engine's."""
    module = get_method(settings.name)
    own = getattr(module, "make_loss", None)
    if own is not None:
        return own(settings, reference)
    return loss_for(*module.loss_kinds(settings), settings, reference)


def prepare_reference(method: MethodConfig, model, adapter_kind: str, phases: list[Phase], tokenizer,
                      batch_size: int = 8, device=None) -> Reference | None:
    """The reference `method` needs (None if none), made from `model` with its adapter applied, BEFORE
    training: for full / last-k training it copies the model (KL) or precomputes the reference
    log-likelihoods of the forget examples in `phases` (NPO)."""
    module = get_method(method.name)
    forget_loss, retain_loss = module.loss_kinds(method)
    own = getattr(module, "needs_reference", None)
    if not (own(method) if own is not None else needs_reference(forget_loss, retain_loss)):
        return None
    reference = Reference.for_model(model, adapter_kind)
    reference.prepare(phases, tokenizer, batch_size, device)
    reference.require(forget_loss, retain_loss)
    return reference
