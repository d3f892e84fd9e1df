"""Losses that train towards a replacement answer: IdkNLL (descent on a refusal) and IdkDPO (a refusal
preferred over the original answer), each with the retain term of gradient difference.

Per example, times its weight:

    forget, IdkNLL:  mean token NLL of the refusal (the example's own sequence is the refusal)
    forget, IdkDPO:  -(2/beta) * logsigmoid(beta * ((logp_w - ref_logp_w) - (logp_l - ref_logp_l)))
    retain, "nll":   mean token NLL;  "kl": KL(reference || model) as in methods.engine.losses;  "none": 0

where logp_w is the sequence log-likelihood (summed over the answer tokens) of the refusal, the example's
paired sequence (`Example.pair_input_ids`), and logp_l that of the example's own sequence, the original
answer; ref_ are the same under the reference model. The 2/beta factor is OpenUnlearning's
(locuslab/open-unlearning `compute_dpo_loss`), which makes the loss at the start (2/beta)*log 2 and its
gradient in the log-likelihoods independent of beta there, as NPO's in this project.

The refusal and the original answer of a forget example go through the model in ONE forward pass
(the pairs are stacked under the batch's rows), so a DDP step runs one forward and one backward as
with every other loss. The reference log-likelihoods come from `Reference.sequence_logp`: LoRA's
adapter switched off, a frozen copy, or values precomputed before training (`Reference.prepare`
precomputes the pairs' too, see `Reference.precompute_pair_logp`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from methods.engine.losses import Reference, kl_per_example
from methods.engine.trainer import LossFunction, LossOutput, token_nll_from_logits
from utils.data.tokenization import IGNORE_INDEX
from utils.errors import UserError


def dpo_loss(chosen_logp: torch.Tensor, chosen_ref: torch.Tensor, rejected_logp: torch.Tensor,
             rejected_ref: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-pair DPO loss from sequence log-likelihoods (see the module docstring)."""
    return -(2.0 / beta) * F.logsigmoid(beta * ((chosen_logp - chosen_ref) - (rejected_logp - rejected_ref)))


def widen(tensor: torch.Tensor, width: int, value: int) -> torch.Tensor:
    """Right-pad the rows of a 2-D tensor to `width` columns with `value`."""
    return F.pad(tensor, (0, width - tensor.size(1)), value=value)


def retain_values(logits: torch.Tensor, batch: dict, mean_nll: torch.Tensor, retain_rows: torch.Tensor,
                  retain_loss: str, reference: Reference | None) -> torch.Tensor:
    """The retain term of every row (zeros outside `retain_rows`); `batch` holds the tensors the logits
    were computed from."""
    if retain_loss == "nll":
        return torch.where(retain_rows, mean_nll, mean_nll * 0.0)
    values = mean_nll * 0.0
    if retain_loss == "kl" and bool(retain_rows.any()):
        ref_logits = reference.logits(batch["input_ids"][retain_rows], batch["attention_mask"][retain_rows])
        values = values.clone()
        values[retain_rows] = kl_per_example(logits[retain_rows], ref_logits, batch["labels"][retain_rows])
    return values


def check_retain_loss(name: str, retain_loss: str, reference: Reference | None) -> None:
    if retain_loss not in ("nll", "kl", "none"):
        raise UserError(f"{name}: method.retain_loss must be nll, kl or none, got {retain_loss!r}")
    if retain_loss == "kl":
        if reference is None:
            raise UserError(f"{name}: the kl retain loss needs a reference model")
        reference.require("logits")


def make_refusal_nll_loss(retain_loss: str = "nll", reference: Reference | None = None) -> LossFunction:
    """IdkNLL: descent on the forget examples (their answers already replaced by refusals) and the retain term."""
    check_retain_loss("idk_nll", retain_loss, reference)

    def loss_fn(model, batch: dict) -> LossOutput:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        mean_nll, _, counts = token_nll_from_logits(logits, batch["labels"])
        weight = batch["weight"].to(mean_nll.dtype)
        is_forget, active = batch["is_forget"], weight != 0
        forget_term = torch.where(is_forget & active, mean_nll, mean_nll * 0.0)
        retain = retain_values(logits, batch, mean_nll, ~is_forget & active, retain_loss, reference)
        # Both terms are means over the answer tokens: the token reduction can sum them.
        return LossOutput(per_example=(forget_term + retain) * weight, nll=mean_nll, tokens=counts)

    return loss_fn


def make_dpo_loss(beta: float, retain_loss: str = "nll", reference: Reference | None = None) -> LossFunction:
    """IdkDPO: each forget example's paired sequence (the refusal) preferred over its own (the original
    answer), and the retain term. The logged NLL of a forget row is its original answer's."""
    if not beta > 0:
        raise UserError(f"idk_dpo: method.dpo_beta must be positive, got {beta}")
    if reference is None:
        raise UserError("idk_dpo: the DPO loss needs a reference model")
    check_retain_loss("idk_dpo", retain_loss, reference)  # first: a KL copy then serves the DPO terms too
    reference.require_sequence_logp()

    def loss_fn(model, batch: dict) -> LossOutput:
        rows = batch["input_ids"].size(0)
        weight = batch["weight"]
        is_forget, active = batch["is_forget"], weight != 0
        forget_rows = is_forget & active
        has_pair = batch.get("has_pair", torch.zeros_like(is_forget))
        if bool((forget_rows & ~has_pair).any()):
            raise UserError("idk_dpo: a forget example has no refusal paired with it (build the examples with "
                            "methods.idk_dpo.make_examples)")
        # Own sequences first, then the pairs of the active forget rows, all as wide as the widest.
        width = batch["input_ids"].size(1)
        if bool(forget_rows.any()):
            width = max(width, batch["pair_input_ids"].size(1))
        own = {key: widen(batch[key], width, fill) for key, fill in
               (("input_ids", 0), ("attention_mask", 0), ("labels", IGNORE_INDEX))}
        pairs = {key: widen(batch[f"pair_{key}"][forget_rows], width, fill) for key, fill in
                 (("input_ids", 0), ("attention_mask", 0), ("labels", IGNORE_INDEX))} if bool(forget_rows.any()) \
            else {key: own[key][:0] for key in own}
        stacked = {key: torch.cat([own[key], pairs[key]]) for key in own}
        logits = model(input_ids=stacked["input_ids"], attention_mask=stacked["attention_mask"]).logits
        mean_all, summed_all, _ = token_nll_from_logits(logits, stacked["labels"])
        mean_nll = mean_all[:rows]
        weight = weight.to(mean_nll.dtype)
        per_example = mean_nll * 0.0
        if bool(forget_rows.any()):
            nan = torch.full((rows,), float("nan"), device=weight.device)
            own_ref = batch.get("reference_logp", nan)
            pair_ref = batch.get("pair_reference_logp", nan)[forget_rows]
            stacked["reference_logp"] = torch.cat([own_ref, pair_ref])
            # Reference log-likelihoods of the forget rows' two sequences, in one call (one reference pass).
            wanted = torch.cat([forget_rows, torch.ones_like(pair_ref, dtype=torch.bool)])
            ref = reference.sequence_logp(stacked, wanted).to(mean_nll.dtype)
            count = int(forget_rows.sum())
            rejected_ref, chosen_ref = ref[:count], ref[count:]
            chosen = -summed_all[rows:]
            rejected = -summed_all[:rows][forget_rows]
            value = torch.zeros_like(mean_nll)
            value[forget_rows] = dpo_loss(chosen, chosen_ref, rejected, rejected_ref, beta)
            per_example = per_example + value
        own_batch = {**own, "weight": weight}
        per_example = per_example + retain_values(logits[:rows], own_batch, mean_nll, ~is_forget & active,
                                                  retain_loss, reference)
        return LossOutput(per_example=per_example * weight, nll=mean_nll)

    return loss_fn
