"""Fully sharded training (`training.sharding: fsdp`) with torch's own FSDP2 (`fully_shard`).

Each process keeps 1/W of every weight, gradient and optimiser state; a layer's full weights exist only
while it runs. That is what full (and wide last-k) training of 7B needs beyond DDP. The loop shards the
model itself instead of using accelerate's FSDP plugin: accelerate builds FSDP only for GPU processes,
which would leave this path untestable on CPU, while `fully_shard` runs the same way on 2 CPU processes
(gloo) as on 8 GPUs (NCCL), and takes a fresh optimiser per phase like any module.

Whatever reads the weights outside a training step (the per-chunk check, checkpoints, the final model,
its evaluation and attacks) gets full tensors: the trainable ones gathered for a checkpoint
(Trainer.trainable_state), or `plain_copy`, an unsharded copy of the model on every process.
"""

from __future__ import annotations

import torch

from utils.errors import UserError


def decoder_layers(model) -> list[torch.nn.Module]:
    """The model's decoder layers (the units sharded one by one), or a one-line error naming the model."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if layers is None or len(layers) == 0:
        raise UserError(f"training.sharding: fsdp needs a decoder with a `layers` list; "
                        f"{type(model).__name__} has none (use training.sharding: none)")
    return list(layers)


def shard_model(model, device) -> torch.nn.Module:
    """Shard `model` in place over the processes of the default process group: each decoder layer is one
    unit (gathered while it runs), the rest (embeddings, final norm, head) the root unit."""
    from torch.distributed.fsdp import fully_shard

    model.to(device)
    for layer in decoder_layers(model):
        fully_shard(layer)
    fully_shard(model)
    return model


def is_sharded(tensor: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def local_part(tensor: torch.Tensor) -> torch.Tensor:
    """This process's shard of a sharded tensor; a plain tensor as it is."""
    return tensor.to_local() if is_sharded(tensor) else tensor


def full_state_dict(model) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict on every process (on the model's device); every process must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))


def plain_copy(model, device) -> torch.nn.Module:
    """An unsharded copy of a sharded model on every process (every process must call it): a fresh model of
    the same class and config, given the full weights and the same trainable flags. For the per-chunk
    check, the final model and its evaluation, which then run on each process alone."""
    from transformers import AutoModelForCausalLM

    state = full_state_dict(model)
    dtype = next(iter(state.values())).dtype
    # The copy's random initialisation is overwritten; it must not move the global generator either.
    with torch.random.fork_rng(devices=[]), torch.device(device):
        plain = AutoModelForCausalLM.from_config(model.config, dtype=dtype)
    plain.load_state_dict(state)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    for name, parameter in plain.named_parameters():
        parameter.requires_grad_(name in trainable)
    plain.generation_config = model.generation_config
    return plain
