"""What part of the model an unlearning or fine-tuning run may change: LoRA, the last k layers, or all;
`adapter.layers` narrows last_k or LoRA to chosen decoder layers.

LoRA keeps the base weights intact, which also gives the KL/NPO reference model for free: the same
model with the adapter disabled (`reference_context`), never a copy in memory.
"""

from __future__ import annotations

import contextlib

import torch

from utils.config import AdapterConfig, layers_setting_problem
from utils.errors import UserError


def decoder_layers(model) -> torch.nn.ModuleList:
    """The stack of decoder blocks of an OLMo/Llama-style causal LM (also under a peft wrapper)."""
    base = model
    for attribute in ("base_model", "model"):
        if hasattr(base, "get_base_model"):
            base = base.get_base_model()
        if hasattr(base, attribute) and hasattr(getattr(base, attribute), "layers"):
            return getattr(base, attribute).layers
    if hasattr(base, "layers"):
        return base.layers
    raise UserError(f"cannot find the decoder layers of {type(model).__name__} for last-k training")


def layer_problem(config: AdapterConfig, count: int) -> str | None:
    """What keeps `config` from fitting a model of `count` decoder layers (None when it fits): the check a run
    makes when it builds the adapter, also made by the dry run and `unlearn doctor` from the model's shape."""
    if config.layers is not None:
        problem = layers_setting_problem(config)
        if problem:
            return problem
        wrong = [index for index in config.layers if isinstance(index, bool) or not 0 <= index < count]
        if wrong:
            return f"adapter.layers: this model's decoder layers are 0 to {count - 1}, got {wrong[0]}"
    elif config.kind == "last_k" and not 0 < config.last_k <= count:
        return f"adapter.last_k must be between 1 and {count} for this model, got {config.last_k}"
    return None


def chosen_layers(config: AdapterConfig, count: int) -> list[int] | None:
    """`adapter.layers` checked against a model of `count` decoder layers, sorted (None when unset)."""
    if config.layers is None:
        return None
    problem = layer_problem(config, count)
    if problem:
        raise UserError(problem)
    return sorted(config.layers)


def apply_adapter(model, config: AdapterConfig):
    """Return the model with only the parts `config` names left trainable."""
    if config.kind == "full":
        chosen_layers(config, 0)  # refuses adapter.layers
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return model
    if config.kind == "last_k":
        layers = decoder_layers(model)
        problem = layer_problem(config, len(layers))
        if problem:
            raise UserError(problem)
        chosen = chosen_layers(config, len(layers))
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        for layer in (layers[-config.last_k:] if chosen is None else [layers[i] for i in chosen]):
            for parameter in layer.parameters():
                parameter.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    if config.lora_rank <= 0:
        raise UserError(f"adapter.lora_rank must be positive, got {config.lora_rank}")
    module_names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in config.target_modules if m not in module_names]
    if missing:
        raise UserError(f"adapter.target_modules: the model has no module named {', '.join(missing)}")
    # peft finds the layer index in each module's name ("...layers.3.mlp.up_proj") for layers_to_transform.
    chosen = chosen_layers(config, len(decoder_layers(model))) if config.layers is not None else None
    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.target_modules), task_type="CAUSAL_LM", layers_to_transform=chosen)
    return get_peft_model(model, lora)


def is_lora(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def reference_context(model):
    """A context in which `model` computes the reference (pre-unlearning) outputs, when it can.

    Under LoRA this disables the adapter: exactly the base model's logits, no copy. Otherwise there is
    no free reference and the caller must provide one.
    """
    if is_lora(model):
        return model.disable_adapter()
    return contextlib.nullcontext()


def finalise(model, config: AdapterConfig):
    """The model to save: LoRA merged into the base weights when asked, else the peft model as is."""
    if is_lora(model) and config.merge_at_end:
        return model.merge_and_unload()
    return model


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The trainable tensors only: what a checkpoint needs to restore an adapter or last-k run."""
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}
