"""fp32 master weights for trainable parameters held in bf16/fp16.

A bf16 weight has 8 bits of mantissa: AdamW's step at lr 1e-5 is smaller than half the spacing between
representable values near a typical weight, so it rounds away and last-k or full training in bf16 barely
moves. The optimiser therefore steps an fp32 copy of each low-precision trainable tensor; the model's
tensor receives the copy, rounded, after every step. LoRA needs none of this (peft keeps adapter weights
in fp32).

The copies live for one phase, like the optimiser: a phase starts from the model's (rounded) weights,
so a run resumed from a checkpoint ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import torch

LOW_PRECISION = (torch.bfloat16, torch.float16)


def wants_master_weights(setting: str, parameters) -> bool:
    """Whether to keep fp32 copies: `training.master_weights` is auto or fp32 and some trainable tensor is
    bf16/fp16 (under training.sharding: fsdp too: the copies are then sharded like the weights)."""
    if setting == "none":
        return False
    return any(p.dtype in LOW_PRECISION for p in parameters)


class MasterWeights:
    """The optimiser's view of the trainable parameters: fp32 copies of the low-precision ones (the others as
    they are). Call `take_gradients` after backward, before clipping and stepping, and `write_back` after."""

    def __init__(self, parameters):
        self.model_parameters = list(parameters)
        self.parameters = [
            p.detach().float().clone().requires_grad_(True) if p.dtype in LOW_PRECISION else p
            for p in self.model_parameters]

    def take_gradients(self) -> None:
        """Move each low-precision gradient onto its fp32 copy (freeing the low-precision one)."""
        for model_parameter, master in zip(self.model_parameters, self.parameters):
            if master is model_parameter:
                continue
            master.grad = None if model_parameter.grad is None else model_parameter.grad.float()
            model_parameter.grad = None

    @torch.no_grad()
    def write_back(self) -> None:
        """Give the model the fp32 copies, rounded to its precision."""
        for model_parameter, master in zip(self.model_parameters, self.parameters):
            if master is not model_parameter:
                model_parameter.copy_(master)
