"""The unlearning methods by name, and a config's `method` section made into a method's typed settings.

A method is one module that follows `Method`: its NAME, its Settings (a dataclass subclassing
utils.config.MethodConfig with only the knobs it reads, each knob's range and help in its field's metadata),
its schedule (`build_phases`), its loss (`make_loss`), whether that loss reads the reference model
(`needs_reference`) and the names of its forget and retain losses for logs (`loss_kinds`). Optionally
`make_examples(items, role, encode, settings, seed)` makes its own training examples (IdkNLL's refusals;
encode(item, role, answer=None) is the run's tokenisation), and `FIXED = {...}` names a setting it does not
have but whose value it always takes, so a config that states that value loads.

Adding a method is that module, a YAML file in configs/ and one line in the list below; a loss term is a
module of methods/losses/ and one line there.
"""

from __future__ import annotations

import dataclasses
import sys
from importlib import import_module
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

from methods.engine.losses import Reference
from methods.engine.losses import check_loss_reduction as check_reduction
from methods.engine.trainer import LossFunction, Phase
from methods.losses import TERMS
from methods.terms import typed_terms
from utils.config import Config, MethodConfig, MethodSection, check_ranges, from_dict
from utils.errors import UserError


@runtime_checkable
class Method(Protocol):
    """What a method module provides (see the module docstring)."""

    NAME: str
    Settings: type

    def build_phases(self, forget: list, retain: list, settings: Any, training: Any, seed: int) -> list[Phase]: ...

    def make_loss(self, settings: Any, reference: Reference | None) -> LossFunction: ...

    def needs_reference(self, settings: Any) -> bool: ...

    def loss_kinds(self, settings: Any) -> tuple[str, str]: ...


METHODS: dict[str, ModuleType] = {}


def register(module: ModuleType) -> ModuleType:
    """Make `module` selectable as `method.name: <module.NAME>`; checks the interface (a mistake in a
    method module is a programming error: TypeError / ValueError)."""
    if not isinstance(module, Method):
        missing = [name for name in ("NAME", "Settings", "build_phases", "make_loss", "needs_reference", "loss_kinds")
                   if not hasattr(module, name)]
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
    "methods.agad",
    "methods.sugd",
    "methods.gold_standard",
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


# --------------------------------------------------------------------------------------------
# The method section: old spellings read into the new shape, then typed settings

# Methods that became a forget term over ga (no retain term) or gd (with one), and their default retain term.
TERM_METHODS = {"npo": "nll", "simnpo": "nll", "wga": "nll", "undial": "none"}
# Flat knobs of the forget terms -> (term, knob).
OLD_KNOBS = {"npo_beta": ("npo", "beta"), "simnpo_beta": ("simnpo", "beta"), "simnpo_gamma": ("simnpo", "gamma"),
             "wga_beta": ("wga", "beta"), "undial_beta": ("undial", "beta")}
OLD_KEYS = ("forget_loss", "retain_loss", *OLD_KNOBS)
SCHEDULES = ("ga", "gd", "sugd", "agad")


def modern_section(name: str, options: dict, path: str = "method") -> tuple[str, dict, str | None]:
    """(name, options, hint) with the old spelling (methods npo, simnpo, wga, undial, kl; keys forget_loss,
    retain_loss, npo_beta, ...) read into the new shape; hint: the line saying how to write it now, or None."""
    old = [key for key in options if key in OLD_KEYS]
    if name not in (*SCHEDULES, *TERM_METHODS, "kl") or (name in SCHEDULES and not old):
        return name, options, None
    options = dict(options)
    forget = options.pop("forget_loss", None)
    retain = options.pop("retain_loss", None)
    knobs = {key: options.pop(key) for key in list(options) if key in OLD_KNOBS}
    if name in TERM_METHODS:
        if forget not in (None, name):
            raise UserError(f"config: {path}.forget_loss of {name} is always {name!r}, got {forget!r}")
        forget, retain = name, TERM_METHODS[name] if retain is None else retain
    elif name == "kl":
        retain = "kl" if retain is None else retain
    elif name == "ga" and retain not in (None, "none"):
        raise UserError(f"config: {path}.retain_loss of ga is always 'none', got {retain!r}")
    new_name = name
    if name in TERM_METHODS or name == "kl":
        new_name = "ga" if retain == "none" else "gd"
    written: dict[str, Any] = {"name": new_name}
    term = forget if forget is not None else (options.get("forget") or "ascent")
    own = {knob: value for key, value in knobs.items() for chosen, knob in [OLD_KNOBS[key]] if chosen == term}
    if forget is not None or own:
        written["forget"] = {"loss": term, **own} if own else term
    if retain is not None and new_name != "ga":
        written["retain"] = retain
    if new_name == "ga":
        options.pop("retain_weight", None)  # no retain term, nothing to weigh
    options.update({k: v for k, v in written.items() if k != "name"})
    renamed = [f"{path}.name: {name}"] if new_name != name else []
    spelled = ", ".join([*renamed, *(f"{path}.{key}" for key in old)])
    shown = ", ".join(f"{key}: {flow(value)}" for key, value in written.items())
    return new_name, options, f"config: {spelled} is the old spelling; write {path}: {{{shown}}}"


def flow(value: Any) -> str:
    """`value` as YAML flow text ({loss: npo, beta: 0.1})."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {flow(v)}" for k, v in value.items()) + "}"
    return str(value)


def typed_settings(section: MethodConfig, path: str = "method", quiet: bool = False) -> MethodConfig:
    """The settings class of the method `section` names, built from its keys and range-checked; settings that are
    already typed come back as they are. An old spelling is read and, unless `quiet`, one line on stderr says
    how to write it now. A knob of another method is refused naming the method it belongs to."""
    if not isinstance(section, MethodSection):
        return section
    name, options, hint = modern_section(section.name, section.options, path)
    if name not in METHODS:
        raise UserError(f"config: {path}.name: unknown method '{name}' (known: {', '.join(METHODS)})")
    if hint and not quiet:
        print(hint, file=sys.stderr)
    module = METHODS[name]
    own = [item.name for item in dataclasses.fields(module.Settings)]
    fixed = getattr(module, "FIXED", {})
    for key in list(options):
        if key in own:
            continue
        if key in fixed:
            if options[key] not in (fixed[key], None):
                raise UserError(f"config: {path}.{key} of {name} is always {fixed[key]!r}, got {options[key]!r}")
            options = {k: v for k, v in options.items() if k != key}
            continue
        owners = sorted(other for other, method in METHODS.items()
                        if key in {item.name for item in dataclasses.fields(method.Settings)})
        if owners:
            takes = ", ".join(k for k in own if k != "name") or "no settings but name"
            raise UserError(f"config: {path}.{key} is not a setting of {name} (it belongs to {', '.join(owners)}); "
                            f"{name} takes: {takes}")
        if key in OLD_KNOBS:
            raise UserError(f"config: {path}.{key} is a knob of the {OLD_KNOBS[key][0]} loss term, which {name} "
                            f"does not use")
    options = typed_terms(module.Settings, options, path)
    terms = {key: options.pop(key) for key in ("forget", "retain") if key in options}
    settings = dataclasses.replace(from_dict(module.Settings, {**options, "name": name}, path), **terms)
    check_ranges(settings, path)
    return settings


def typed(config: Config, quiet: bool = False) -> Config:
    """`config` with its method section as the method's typed settings (idempotent)."""
    settings = typed_settings(config.method, quiet=quiet)
    return config if settings is config.method else dataclasses.replace(config, method=settings)


def saved_method_section(data: dict) -> dict:
    """A saved run's method section (any spelling; a run saved before the settings were per method holds every
    method's keys) as the current code writes it, keeping only what its method reads; as given when it cannot
    be read."""
    from utils.config import to_dict

    try:
        name, options, _ = modern_section(data.get("name", MethodConfig.name), {k: v for k, v in data.items()
                                                                                 if k != "name"})
        own = {item.name for item in dataclasses.fields(get_method(name).Settings)}
        section = MethodSection(name=name, options={k: v for k, v in options.items() if k in own})
        return to_dict(Config(method=typed_settings(section, quiet=True)))["method"]
    except UserError:
        return data


# --------------------------------------------------------------------------------------------
# What callers ask of a method


def make_loss(settings: MethodConfig, reference: Reference | None = None) -> LossFunction:
    """The loss of the method `settings` belong to."""
    return get_method(settings.name).make_loss(settings, reference)


def check_loss_reduction(settings: MethodConfig, training) -> None:
    """Refuse `training.loss_reduction: token` in one line when the method's loss is not a token mean."""
    token_means = tuple(name for name, term in TERMS.items() if term.token_mean)
    check_reduction(settings.name, training, *get_method(settings.name).loss_kinds(settings), token_means)


def prepare_reference(method: MethodConfig, model, adapter_kind: str, phases: list[Phase], tokenizer,
                      batch_size: int = 8, device=None) -> Reference | None:
    """The reference `method` needs (None if none), made from `model` with its adapter applied, BEFORE
    training; the method's `make_loss` says what it reads of it (a frozen copy for logits under full /
    last-k, or the forget examples' log-likelihoods in `phases`, precomputed)."""
    module = get_method(method.name)
    if not module.needs_reference(method):
        return None
    reference = Reference.for_model(model, adapter_kind)
    reference.prepare(phases, tokenizer, batch_size, device)
    module.make_loss(method, reference)  # the loss asks the reference for what it reads, now, before training
    return reference


# --------------------------------------------------------------------------------------------
# The settings as docs list them, from the fields' metadata


def settings_tables() -> str:
    """Markdown tables of every method's and every loss term's knobs (key, default, range, help), made from the
    fields' metadata; docs/methods.md holds them between its `knobs` markers (`python -m methods.registry`)."""
    from utils.config import knob_table

    def table(title: str, rows: list[tuple[str, ...]]) -> list[str]:
        out = [f"| {title} | key | default | range | what it does |", "|---|---|---|---|---|"]
        out += ["| " + " | ".join(f"`{cell}`" if i in (0, 1, 2) and cell else cell for i, cell in enumerate(row))
                + " |" for row in rows]
        return out

    method_rows = [(name, *row) for name, module in METHODS.items() for row in knob_table(module.Settings)]
    term_rows = [(f"{term.role}: {name}", *row) for name, term in TERMS.items() for row in knob_table(term)]
    bare = [name for name, module in METHODS.items() if not knob_table(module.Settings)]
    lines = table("method", method_rows)
    lines += ["", f"No settings but `name`: {', '.join(f'`{name}`' for name in bare)}.", ""]
    lines += table("loss term", term_rows)
    knobless = [name for name, term in TERMS.items() if not knob_table(term)]
    lines += ["", f"Loss terms without knobs: {', '.join(f'`{name}`' for name in knobless)}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(settings_tables(), end="")
