"""RMU, representation misdirection for unlearning (Li et al. 2024, the WMDP paper).

At one decoder layer l (`method.layer`, 0-based: the output of model.layers[l], which is
`hidden_states[l + 1]` in transformers' numbering where hidden_states[0] is the embeddings; any layer
but the last, whose entry there is the final norm's output), the
forget examples' hidden states are pushed toward a fixed random direction scaled by a coefficient,
and the retain examples' hidden states are held at the frozen (pre-unlearning) model's:

    forget example:  (1/T) * sum_t ||h_t - c * u||^2 / d
    retain example:  (1/T) * sum_t ||h_t - h_ref_t||^2 / d

h_t is the model's hidden state at layer l and token t, h_ref_t the reference model's, d the hidden
size, c = `method.steering_coeff`, and u a unit vector drawn once, uniform in [0, 1)^d then normalised
as the paper does, from `method.direction_seed`: the same in every process and after a resume, never
stored. The tokens t are the example's labelled tokens (labels != -100: the answer, or the whole text
with training.loss_on full), the hidden state at the token's own position, as OpenUnlearning counts
them; T is their number. The batches are gradient difference's (`mixed_phase`), so a step's loss is
mean(forget) + retain_weight * mean(retain), retain_weight being the paper's alpha.

Only the layers that feed layer l can move its hidden states: the run trains a few layers at or before
it, set with `adapter.layers` (the paper trains the MLPs of layers l-2, l-1 and l; here those layers
train whole, or hold LoRA). A trainable weight the loss cannot reach (a later layer, the output head)
is refused in one line: it would only decay, and DDP stops on parameters that get no gradient.

The reference model's hidden states come from `methods.engine.losses.Reference`: under LoRA the model
with its adapter disabled, otherwise a frozen copy made before training.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from methods.engine.losses import Reference
from methods.engine.phases import mixed_phase
from methods.engine.trainer import LossFunction, LossOutput, Phase, token_nll_from_logits
from utils.config import NON_NEGATIVE, POSITIVE, SEED, MethodConfig, TrainingConfig, ranged
from utils.data.tokenization import Example
from utils.errors import UserError
from utils.models.adapters import decoder_layers

NAME = "rmu"


@dataclass
class Settings(MethodConfig):
    """The published defaults (Zephyr-7B in the WMDP paper); configs/rmu.yaml sets the tiny default's."""

    name: str = NAME
    layer: int = ranged(7, NON_NEGATIVE, "the decoder layer whose output is steered (0-based)")
    steering_coeff: float = ranged(6.5, POSITIVE, "c: the length of the target c * u; it must grow with the "
                                                  "activations' norm")
    retain_weight: float = ranged(1200.0, NON_NEGATIVE, "alpha: the retain term's weight against the forget term's")
    direction_seed: int = ranged(0, SEED, "the seed the random direction u is drawn from")


def loss_kinds(settings: Settings) -> tuple[str, str]:
    # Names for logs and plots only: RMU's loss is its own (make_loss), not one of the engine's.
    return "rmu", "rmu"


def needs_reference(settings: Settings) -> bool:
    return True  # the retain term reads the frozen model's hidden states


def build_phases(forget: list[Example], retain: list[Example], settings: Settings, training: TrainingConfig,
                 seed: int) -> list[Phase]:
    if not forget:
        raise UserError(f"{NAME}: the forget set is empty; there is nothing to unlearn")
    if not retain:
        raise UserError(f"{NAME}: the retain set is empty but the method needs it (its retain term)")
    return [mixed_phase(NAME, forget, retain, settings.retain_weight, training, seed)]


@functools.lru_cache(maxsize=8)
def steering_direction(size: int, seed: int) -> torch.Tensor:
    """u: a unit vector of `size` drawn uniform in [0, 1)^size from `seed` on the CPU generator, so every
    process and every resumed run draws the same one."""
    generator = torch.Generator().manual_seed(seed)
    vector = torch.rand(size, generator=generator, dtype=torch.float64)
    return (vector / vector.norm()).float()


def per_example_mse(hidden: torch.Tensor, target: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Each row's mean over its `positions` of ||hidden_t - target_t||^2 / d (target broadcasts)."""
    per_token = (hidden.float() - target.float()).pow(2).mean(dim=-1) * positions
    return per_token.sum(dim=1) / positions.sum(dim=1).clamp(min=1)


def check_reachable(model, layer: int) -> None:
    """Refuse trainable weights that cannot change decoder layer `layer`'s output (see the module docstring)."""
    layers = decoder_layers(model)
    # Not the last layer: transformers hands back the final norm's output in its place.
    if not 0 <= layer < len(layers) - 1:
        raise UserError(f"{NAME}: method.layer must be a decoder layer before this model's last, 0 to "
                        f"{len(layers) - 2}, got {layer}")
    feeding = {id(p) for block in layers[:layer + 1] for p in block.parameters()}
    feeding |= {id(p) for p in model.get_input_embeddings().parameters()}
    unreachable = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in feeding]
    if unreachable:
        first = max(0, layer - 2)
        raise UserError(f"{NAME}: the adapter trains weights after decoder layer {layer} (method.layer), which the "
                        f"RMU loss never reaches (e.g. {unreachable[0]}); set adapter.layers to layers at or before "
                        f"it, e.g. [{', '.join(map(str, range(first, layer + 1)))}] (with adapter.kind last_k or lora)")


def make_loss(settings: Settings, reference: Reference | None) -> LossFunction:
    """RMU's loss (model, batch) -> LossOutput; `nll` is each example's mean token NLL, for the logs."""
    if reference is None:
        raise UserError(f"{NAME} needs the reference model's hidden states (methods.registry.prepare_reference)")
    reference.require_outputs()
    check_reachable(reference.model, settings.layer)
    index = settings.layer + 1  # hidden_states[0] is the embeddings

    def loss_fn(model, batch: dict) -> LossOutput:
        input_ids, attention_mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        outputs = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        with torch.no_grad():
            mean_nll = token_nll_from_logits(outputs.logits, labels)[0]
        hidden = outputs.hidden_states[index]
        positions = (labels != -100).to(torch.float32)
        weight = batch["weight"].to(torch.float32)
        is_forget = batch["is_forget"]
        active = weight != 0  # zero-weight rows (DDP placeholders) never need a reference
        # Zeros attached to the steered layer's graph: a batch whose rows contribute nothing still
        # backpropagates into every trainable weight (DDP synchronises in backward), and only those.
        zeros = hidden.float().sum(dim=(1, 2)) * 0.0
        per_example = zeros

        forget_rows = is_forget & active
        if bool(forget_rows.any()):
            target = settings.steering_coeff * steering_direction(hidden.size(-1), settings.direction_seed)
            value = per_example_mse(hidden, target.to(hidden.device), positions)
            per_example = per_example + torch.where(forget_rows, value, zeros)

        retain_rows = ~is_forget & active
        if bool(retain_rows.any()):
            frozen = reference.hidden_states(input_ids[retain_rows], attention_mask[retain_rows], index)
            value = torch.zeros_like(zeros)
            value[retain_rows] = per_example_mse(hidden[retain_rows], frozen, positions[retain_rows])
            per_example = per_example + torch.where(retain_rows, value, zeros)

        return LossOutput(per_example=per_example * weight, nll=mean_nll)

    return loss_fn
