"""How the unlearning losses are put together, and the reference model they may need.

A batch holds forget and/or retain examples (`batch["is_forget"]`), each with a non-negative weight
(`batch["weight"]`). One forward pass gives the logits and, from them, one `ForwardView`; each forget row
gets the method's forget term, each retain row its retain term (`LossTerm`s, one module each in
`methods/losses/`), times the row's weight (`unlearning_loss`). The terms' formulas are in their modules.

With `ceiling` set, a forget example whose mean token NLL already reaches it contributes 0 (and no
gradient): ascent stops there instead of driving the model into gibberish. With `ceiling_scope="document"`
the ceiling is a level of the whole text's mean token NLL (prompt + answer, what the MIA loss attack
measures), read from the same forward pass: ascent on the answer stops once the whole text looks as
unlikely as the ceiling says.

The reference (pre-unlearning) model, read by the terms that say so (`LossTerm.reference`), comes from
`Reference`:
  * LoRA: the same model with the adapter disabled (`utils.models.adapters.reference_context`), exact
    and copy-free;
  * full / last-k, a term reading sequence log-likelihoods (NPO): each forget example's reference
    log-likelihood, precomputed once before training (`Reference.precompute_sequence_logp`) and carried
    in the batch;
  * full / last-k, a term reading logits (KL, UNDIAL): a frozen deep copy of the model, the one place a
    copy of the model is made, because both need the reference's whole distribution at every token.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from methods.engine.trainer import LossFunction, LossOutput, Phase, text_labels, token_nll_from_logits
from utils.data.tokenization import Example, collate
from utils.errors import UserError
from utils.models.adapters import is_lora, reference_context

# Loss kinds outside methods/losses whose per-example value is a mean over answer tokens (IdkNLL's refusal
# NLL; "none" contributes nothing); DPO and RMU are sequence-level.
OTHER_TOKEN_MEANS = ("refusal_nll", "none")


def check_loss_reduction(name: str, training, forget_loss: str, retain_loss: str,
                         token_means: tuple[str, ...] = ()) -> None:
    """Refuse, in one line, `training.loss_reduction: token` for a method whose loss is not a token mean;
    `token_means` names the terms that are (besides OTHER_TOKEN_MEANS)."""
    if training.loss_reduction != "token":
        return
    for kind in (forget_loss, retain_loss):
        if kind not in (*token_means, *OTHER_TOKEN_MEANS):
            raise UserError(f"{name}: training.loss_reduction: token sums the loss over answer tokens, but the {kind} "
                            "loss is one value per sequence; set training.loss_reduction: example")


def unwrap(model):
    """The bare model under accelerate/DDP wrappers (peft wrappers are kept)."""
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model)


def answer_positions(logits: torch.Tensor, labels: torch.Tensor):
    """(logits at the labelled positions as float32 [N, V], their targets [N], each one's example index
    [N], labelled tokens per example [B]); gathering first keeps the vocabulary-sized tensors small."""
    mask = labels[:, 1:] != -100
    example_index = mask.nonzero(as_tuple=True)[0]
    return logits[:, :-1, :][mask].float(), labels[:, 1:][mask], example_index, mask.sum(dim=1)


def per_example_mean(per_token: torch.Tensor, example_index: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    sums = torch.zeros(counts.size(0), dtype=per_token.dtype, device=per_token.device).index_add(
        0, example_index, per_token)
    return sums / counts.clamp(min=1)


def kl_per_example(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KL(reference || model) over the vocabulary at each labelled position, averaged per example.

    Only the labelled (answer) positions are gathered before the softmaxes, so the float32
    vocabulary-sized tensors cover the answer tokens, not every padded position of the batch.
    """
    answer_logits, _, example_index, counts = answer_positions(logits, labels)
    log_model = F.log_softmax(answer_logits, dim=-1)
    log_ref = F.log_softmax(ref_logits[:, :-1, :][labels[:, 1:] != -100].float(), dim=-1)
    # kl_div(input=log q, target=log p, log_target=True) = sum p * (log p - log q) = KL(p || q).
    per_token = F.kl_div(log_model, log_ref, reduction="none", log_target=True).sum(dim=-1)
    return per_example_mean(per_token, example_index, counts)


class Reference:
    """Where the reference (pre-unlearning) model's outputs come from; see the module docstring.

    mode "adapter":     LoRA, the model itself with the adapter disabled (logits on demand);
    mode "copy":        a frozen deep copy (full / last-k with a KL retain loss; logits on demand);
    mode "precomputed": full / last-k without KL; only the forget examples' sequence log-likelihoods,
                        computed once before training, are available (carried in the batches).

    Usage, all BEFORE training (the reference is the model as it is at that moment):

        reference = Reference.for_model(model, adapter.kind)          # model with its adapter applied
        reference.prepare(phases, tokenizer, batch_size, device)      # remembers the forget examples
        loss_fn = methods.registry.make_loss(settings, reference)   # calls reference.require(...)

    `require("logits" | "sequence_logp")` (called by `unlearning_loss` for its terms) makes the frozen copy
    when a term reads logits and, for sequence log-likelihoods without a free reference, precomputes
    `Example.reference_logp` for the forget examples given to `prepare` (in whichever order the two calls come).
    """

    def __init__(self, model, mode: str, frozen=None):
        if mode not in ("adapter", "copy", "precomputed"):
            raise ValueError(f"unknown reference mode {mode!r}")
        self.model = model
        self.mode = mode
        self.frozen = frozen
        self._pending: tuple | None = None  # (forget examples, tokenizer, batch size, device) from prepare()
        self._needs_logp = False
        self._precomputed = False

    @classmethod
    def for_model(cls, model, adapter_kind: str, needs_logits: bool = False) -> Reference:
        """The reference for `model` (with its adapter already applied) trained as `adapter_kind`.

        `needs_logits`: make the frozen copy now (full / last-k with KL); `require` does it otherwise.
        """
        model = unwrap(model)
        if adapter_kind == "lora":
            if not is_lora(model):
                raise UserError("the LoRA reference needs the model with its adapter applied (apply_adapter first)")
            return cls(model, "adapter")
        if adapter_kind not in ("full", "last_k"):
            raise UserError(f"unknown adapter kind {adapter_kind!r} (expected lora, last_k or full)")
        reference = cls(model, "precomputed")
        if needs_logits:
            reference._make_copy()
        return reference

    def _make_copy(self) -> None:
        # The one place a copy of the model is made: KL needs the reference's whole distribution and
        # full / last-k training leaves no untouched weights to compute it from.
        frozen = copy.deepcopy(self.model)
        frozen.eval()
        frozen.requires_grad_(False)
        self.frozen = frozen
        self.mode = "copy"

    def prepare(self, phases: list[Phase], tokenizer, batch_size: int = 8, device=None) -> None:
        """Remember the phases' forget examples for NPO's precomputation (done now if already required)."""
        forget = [e for phase in phases for e in phase.examples if e.role == "forget"]
        self._pending = (forget, tokenizer, batch_size, device)
        self._maybe_precompute()

    def require(self, *needs: str | None) -> None:
        """Get ready for terms that read the reference (`LossTerm.reference`): "logits" makes the frozen copy
        under full / last-k; "sequence_logp" precomputes the forget examples' log-likelihoods there."""
        if "logits" in needs and self.mode == "precomputed":
            self._make_copy()
        if "sequence_logp" in needs:
            self._needs_logp = True
            self._maybe_precompute()

    def _maybe_precompute(self) -> None:
        if self.mode == "precomputed" and self._needs_logp and self._pending is not None and not self._precomputed:
            forget, tokenizer, batch_size, device = self._pending
            self.precompute_sequence_logp(forget, tokenizer, batch_size, device)
            self.precompute_pair_logp(forget, tokenizer, batch_size, device)
            self._precomputed = True

    def require_sequence_logp(self) -> None:
        """Get ready for a loss that reads the forget examples' (and their pairs') reference sequence
        log-likelihoods (e.g. DPO): precomputed now, or once `prepare` comes, when no reference model is free."""
        self._needs_logp = True
        self._maybe_precompute()

    @property
    def has_logits(self) -> bool:
        return self.mode in ("adapter", "copy")

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The reference model's logits for a batch, without gradient."""
        if self.mode == "adapter":
            with reference_context(self.model):
                return self.model(input_ids=input_ids, attention_mask=attention_mask).logits.detach()
        if self.mode == "copy":
            if next(self.frozen.parameters()).device != input_ids.device:
                self.frozen.to(input_ids.device)
            return self.frozen(input_ids=input_ids, attention_mask=attention_mask).logits.detach()
        raise RuntimeError("this reference has no model outputs (full/last-k without KL): "
                           "only precomputed sequence log-likelihoods are available")

    def require_outputs(self) -> None:
        """Make the reference model's outputs (logits, hidden states) available: under full / last-k this
        makes the frozen copy now, so call it before training, while the model is still the reference."""
        if self.mode == "precomputed":
            self._make_copy()

    @torch.no_grad()
    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, index: int) -> torch.Tensor:
        """The reference model's `hidden_states[index]` (0: the embeddings, i: decoder layer i-1's output),
        without gradient."""
        if self.mode == "adapter":
            with reference_context(self.model):
                outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
            return outputs.hidden_states[index].detach()
        if self.mode == "copy":
            if next(self.frozen.parameters()).device != input_ids.device:
                self.frozen.to(input_ids.device)
            outputs = self.frozen(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
            return outputs.hidden_states[index].detach()
        raise RuntimeError("this reference has no model outputs yet: call require_outputs() before training")

    @torch.no_grad()
    def precompute_sequence_logp(self, examples: Iterable[Example], tokenizer, batch_size: int = 8,
                                 device=None) -> list[float]:
        """Set `reference_logp` on every example (in place) from the model as it is now; call before training.

        Examples with the same tokens are computed once. Returns the values in the given order.
        """
        examples = list(examples)
        unique: dict[tuple, list[Example]] = {}
        for example in examples:
            unique.setdefault((tuple(example.input_ids), tuple(example.labels)), []).append(example)
        keys = list(unique)
        model = self.frozen if self.mode == "copy" else self.model
        if device is not None:
            model.to(device)
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            for start in range(0, len(keys), batch_size):
                chunk = keys[start:start + batch_size]
                batch = collate([unique[key][0] for key in chunk], tokenizer.pad_token_id)
                input_ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
                if self.mode == "adapter":
                    with reference_context(model):
                        logits = model(input_ids=input_ids, attention_mask=mask).logits
                else:
                    logits = model(input_ids=input_ids, attention_mask=mask).logits
                _, summed, _ = token_nll_from_logits(logits, batch["labels"].to(device))
                for key, value in zip(chunk, (-summed).tolist()):
                    for example in unique[key]:
                        example.reference_logp = float(value)
        finally:
            model.train(was_training)
        return [float(e.reference_logp) for e in examples]

    def precompute_pair_logp(self, examples: Iterable[Example], tokenizer, batch_size: int = 8,
                             device=None) -> None:
        """Set `pair_reference_logp` on every example with a paired sequence (in place), as
        `precompute_sequence_logp` does for the examples' own sequences; call before training."""
        paired = [e for e in examples if e.pair_input_ids is not None]
        if not paired:
            return
        values = self.precompute_sequence_logp([Example(e.pair_input_ids, e.pair_labels) for e in paired], tokenizer,
                                               batch_size, device)
        for example, value in zip(paired, values):
            example.pair_reference_logp = value

    def sequence_logp(self, batch: dict, rows: torch.Tensor) -> torch.Tensor:
        """Reference sequence log-likelihoods of the batch rows selected by the boolean mask `rows`."""
        if "reference_logp" in batch:
            values = batch["reference_logp"][rows]
            if not torch.isnan(values).any():
                return values
        if not self.has_logits:
            raise UserError("NPO without LoRA needs the reference log-likelihoods precomputed before training "
                            "(Reference.prepare(phases, ...) or precompute_sequence_logp on the forget examples)")
        logits = self.logits(batch["input_ids"][rows], batch["attention_mask"][rows])
        _, summed, _ = token_nll_from_logits(logits, batch["labels"][rows])
        return -summed


@runtime_checkable
class LossTerm(Protocol):
    """One term of an unlearning loss (a module of methods/losses/): a dataclass of its own knobs, each
    knob's bound and help in its field's metadata (utils.config.knob), and

        loss:       the name configs choose it by (a field, so a saved config writes it)
        role:       "forget" or "retain", the rows it is for
        reference:  None, "logits" or "sequence_logp": what it reads of the reference model
        token_mean: whether its per-example value is a mean over answer tokens (training.loss_reduction: token)
    """

    loss: str
    role: ClassVar[str]
    reference: ClassVar[str | None]
    token_mean: ClassVar[bool]

    def per_example(self, view: ForwardView, rows: torch.Tensor) -> torch.Tensor:
        """One value per batch row, read at `rows` (a boolean mask; other rows may hold anything)."""
        ...


class TermDefaults:
    """What most terms are, for a term dataclass to inherit: a forget term that reads no reference and whose
    per-example value is a mean over the answer tokens (a term says otherwise where it differs)."""

    role: ClassVar[str] = "forget"
    reference: ClassVar[str | None] = None
    token_mean: ClassVar[bool] = True


@dataclass
class ForwardView:
    """One forward pass as every term sees it: the batch, its logits and labels, each row's mean and
    summed answer-token NLL and answer-token count, and the reference (None when no term reads it)."""

    batch: dict
    logits: torch.Tensor
    labels: torch.Tensor
    mean_nll: torch.Tensor
    summed_nll: torch.Tensor
    counts: torch.Tensor
    reference: Reference | None

    def scatter(self, rows: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """A [B] tensor holding `values` (computed on the batch's `rows` only) at those rows, zeros elsewhere."""
        full = torch.zeros_like(self.mean_nll)
        full[rows] = values.to(full.dtype)
        return full

    def reference_logits(self, rows: torch.Tensor) -> torch.Tensor:
        return self.reference.logits(self.batch["input_ids"][rows], self.batch["attention_mask"][rows])


def unlearning_loss(forget: LossTerm | None, retain: LossTerm | None, reference: Reference | None = None,
                    ceiling: float | None = None, ceiling_scope: str = "answer") -> LossFunction:
    """The loss function (model, batch) -> LossOutput: forget rows get `forget`, retain rows `retain` (None:
    nothing), each times its weight; see the module docstring for the ceiling."""
    terms = [term for term in (forget, retain) if term is not None]
    needs = [term.reference for term in terms if term.reference]
    if needs:
        if reference is None:
            raise UserError(f"the {next(t.loss for t in terms if t.reference)} loss needs a reference model")
        reference.require(*needs)
    token_mean = all(term.token_mean for term in terms)

    def loss_fn(model, batch: dict) -> LossOutput:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        mean_nll, summed_nll, counts = token_nll_from_logits(logits, batch["labels"])
        view = ForwardView(batch, logits, batch["labels"], mean_nll, summed_nll, counts, reference)
        weight = batch["weight"].to(mean_nll.dtype)
        active = weight != 0  # zero-weight rows (DDP placeholders) never need a reference
        # Zeros that stay attached to the graph: a batch whose rows all contribute nothing must still
        # backpropagate through the model (DDP synchronises gradients in backward on every process).
        zeros = mean_nll * 0.0
        per_example = zeros
        parts = {}
        for role, term, rows in (("forget", forget, batch["is_forget"] & active),
                                 ("retain", retain, ~batch["is_forget"] & active)):
            if term is None or not bool(rows.any()):
                continue
            keep = rows
            if term is forget and ceiling is not None:
                level = mean_nll.detach()
                if ceiling_scope == "document":
                    with torch.no_grad():
                        level = token_nll_from_logits(logits.detach(), text_labels(batch))[0]
                keep = keep & (level < ceiling)
            values = term.per_example(view, rows)
            per_example = per_example + torch.where(keep, values, zeros)
            parts[f"{role}_{term.loss}"] = (values.detach(), keep)
        return LossOutput(per_example=per_example * weight, nll=mean_nll, tokens=counts if token_mean else None,
                          terms=parts)

    return loss_fn
