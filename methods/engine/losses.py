"""The one composable unlearning loss every method uses, and the reference model it may need.

A batch holds forget and/or retain examples (`batch["is_forget"]`), each with a non-negative weight
(`batch["weight"]`). One forward pass gives the logits; each example's loss is

    forget, "ascent":  -mean token NLL                                   (gradient ascent)
    forget, "npo":     -(2/beta) * logsigmoid(-beta * (logp - ref_logp))  (sequence log-likelihoods)
    forget, "simnpo":  -(2/beta) * logsigmoid(beta * nll_bar - gamma)      (SimNPO, Fan et al. 2024)
    forget, "wga":     -(1/T) * sum_t p_t^beta * nll_t                     (WGA, Wang et al. 2025)
    forget, "undial":  (1/T) * sum_t CE(softmax(ref_z_t - beta * onehot(y_t)), softmax(z_t))
                                                                         (UNDIAL, Dong et al. 2024)
    forget, "none":    0
    retain, "nll":     mean token NLL                                    (gradient descent)
    retain, "kl":      KL(reference || model) over the vocabulary, averaged over the output tokens
    retain, "none":    0

times the example's weight. Here nll_t is the token NLL of answer token y_t, T the example's
answer-token count, nll_bar = (1/T) * sum_t nll_t its mean token NLL, p_t = exp(-nll_t) the model's
probability of y_t (in WGA a constant weight: no gradient flows through it), z_t the model's and ref_z_t
the reference's logits at the position that predicts y_t, and CE(q, p) = -sum_v q_v log p_v.

SimNPO is NPO with the reference replaced by a length normalisation and a margin gamma; WGA is gradient
ascent whose tokens count by their probability, so already-forgotten tokens stop pulling; UNDIAL distils
the model towards the reference's own distribution with the true token's logit lowered by beta (a fixed,
bounded target instead of a divergent ascent). Where OpenUnlearning (locuslab/open-unlearning) writes
them differently:
  * SimNPO: its `delta` is this gamma / beta (it subtracts delta inside beta * (...)); its forget
    coefficient (0.125 on TOFU) is 1 here, the retain term's relative weight being method.retain_weight;
  * WGA and UNDIAL: it averages over all the batch's tokens at once (UNDIAL also over prompt and padding
    positions); here each example averages over its own answer tokens, like every other loss here.
UNDIAL's CE differs from KL(target || model) by the target's entropy, a constant: same gradient.

With `forget_loss_ceiling` set, a forget example whose mean token NLL already reaches the ceiling
contributes 0 (and no gradient): ascent stops there instead of driving the model into gibberish.
With `ceiling_scope="document"` the ceiling is a level of the
whole text's mean token NLL (prompt + answer, what the MIA loss attack measures), read from the same
forward pass: ascent on the answer stops once the whole text looks as unlikely as the ceiling says.

The reference (pre-unlearning) model, needed by NPO, UNDIAL and KL, comes from `Reference`:
  * LoRA: the same model with the adapter disabled (`utils.models.adapters.reference_context`), exact
    and copy-free;
  * full / last-k, NPO: each forget example's reference log-likelihood, precomputed once before
    training (`Reference.precompute_sequence_logp`) and carried in the batch;
  * full / last-k, KL or UNDIAL: a frozen deep copy of the model, the one place a copy of the model is
    made, because both need the reference's whole distribution at every (retain / forget) token.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
import torch.nn.functional as F

from methods.engine.trainer import LossFunction, LossOutput, Phase, text_labels, token_nll_from_logits
from utils.data.tokenization import Example, collate
from utils.errors import UserError
from utils.models.adapters import is_lora, reference_context

FORGET_LOSSES = ("ascent", "npo", "simnpo", "wga", "undial", "none")
# Forget losses that read the reference model (NPO its sequence log-likelihoods, UNDIAL its logits).
REFERENCE_FORGET_LOSSES = ("npo", "undial")
RETAIN_LOSSES = ("nll", "kl", "none")
# Losses whose per-example value is a mean over the answer tokens, so `training.loss_reduction: token` can sum
# them token by token (IdkNLL's refusal NLL included); NPO, SimNPO, DPO and RMU are sequence-level.
TOKEN_MEAN_LOSSES = ("ascent", "wga", "undial", "refusal_nll", "nll", "kl", "none")


def check_loss_reduction(name: str, training, forget_loss: str, retain_loss: str) -> None:
    """Refuse, in one line, `training.loss_reduction: token` for a method whose loss is not a token mean."""
    if training.loss_reduction != "token":
        return
    for kind in (forget_loss, retain_loss):
        if kind not in TOKEN_MEAN_LOSSES:
            raise UserError(f"{name}: training.loss_reduction: token sums the loss over answer tokens, but the {kind} "
                            "loss is one value per sequence; set training.loss_reduction: example")


def unwrap(model):
    """The bare model under accelerate/DDP wrappers (peft wrappers are kept)."""
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model)


def npo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-example NPO loss from sequence log-likelihoods: -(2/beta) * logsigmoid(-beta * (logp - ref_logp))."""
    return -(2.0 / beta) * F.logsigmoid(-beta * (logp - ref_logp))


def simnpo_loss(mean_nll: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """Per-example SimNPO loss from mean token NLLs: -(2/beta) * logsigmoid(beta * mean_nll - gamma)."""
    return -(2.0 / beta) * F.logsigmoid(beta * mean_nll - gamma)


def _answer_positions(logits: torch.Tensor, labels: torch.Tensor):
    """(logits at the labelled positions as float32 [N, V], their targets [N], each one's example index
    [N], labelled tokens per example [B]); gathering first keeps the vocabulary-sized tensors small."""
    mask = labels[:, 1:] != -100
    example_index = mask.nonzero(as_tuple=True)[0]
    return logits[:, :-1, :][mask].float(), labels[:, 1:][mask], example_index, mask.sum(dim=1)


def _per_example_mean(per_token: torch.Tensor, example_index: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    sums = torch.zeros(counts.size(0), dtype=per_token.dtype, device=per_token.device).index_add(
        0, example_index, per_token)
    return sums / counts.clamp(min=1)


def wga_per_example(logits: torch.Tensor, labels: torch.Tensor, beta: float) -> torch.Tensor:
    """WGA's per-example loss: -mean over answer tokens of p_t^beta * nll_t, the weight p_t^beta detached."""
    answer_logits, targets, example_index, counts = _answer_positions(logits, labels)
    token_nll = F.cross_entropy(answer_logits, targets, reduction="none")
    weight = torch.exp(-beta * token_nll.detach())  # p_t ** beta, a constant: the gradient is ascent's, reweighted
    return _per_example_mean(-weight * token_nll, example_index, counts)


def undial_per_example(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor,
                       beta: float) -> torch.Tensor:
    """UNDIAL's per-example loss: the mean over answer tokens of the cross-entropy from the reference's
    distribution with the true token's logit lowered by beta to the model's distribution."""
    answer_logits, targets, example_index, counts = _answer_positions(logits, labels)
    ref_answer = ref_logits[:, :-1, :][labels[:, 1:] != -100].float()
    lowered = ref_answer - beta * F.one_hot(targets, ref_answer.size(-1)).to(ref_answer.dtype)
    target = F.softmax(lowered, dim=-1)
    per_token = -(target * F.log_softmax(answer_logits, dim=-1)).sum(dim=-1)
    return _per_example_mean(per_token, example_index, counts)


def kl_per_example(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KL(reference || model) over the vocabulary at each labelled position, averaged per example.

    Only the labelled (answer) positions are gathered before the softmaxes, so the float32
    vocabulary-sized tensors cover the answer tokens, not every padded position of the batch.
    """
    answer_logits, _, example_index, counts = _answer_positions(logits, labels)
    log_model = F.log_softmax(answer_logits, dim=-1)
    log_ref = F.log_softmax(ref_logits[:, :-1, :][labels[:, 1:] != -100].float(), dim=-1)
    # kl_div(input=log q, target=log p, log_target=True) = sum p * (log p - log q) = KL(p || q).
    per_token = F.kl_div(log_model, log_ref, reduction="none", log_target=True).sum(dim=-1)
    return _per_example_mean(per_token, example_index, counts)


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

    `require(forget_loss, retain_loss)` (called by `make_unlearning_loss`) makes the frozen copy when
    KL needs one and, for NPO without a free reference, precomputes `Example.reference_logp` for the
    forget examples given to `prepare` (in whichever order the two calls come).
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

    def require(self, forget_loss: str, retain_loss: str) -> None:
        """Get ready for a loss combination: a frozen copy for KL and UNDIAL (which need the reference's
        logits), precomputed log-likelihoods for NPO."""
        if (retain_loss == "kl" or forget_loss == "undial") and self.mode == "precomputed":
            self._make_copy()
        if forget_loss == "npo":
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


def needs_reference(forget_loss: str, retain_loss: str) -> bool:
    return forget_loss in REFERENCE_FORGET_LOSSES or retain_loss == "kl"


def make_unlearning_loss(forget_loss: str = "ascent", retain_loss: str = "nll", npo_beta: float = 0.1,
                         forget_loss_ceiling: float | None = None, reference: Reference | None = None,
                         ceiling_scope: str = "answer", simnpo_beta: float = 4.5, simnpo_gamma: float = 0.0,
                         wga_beta: float = 1.0, undial_beta: float = 10.0) -> LossFunction:
    """The loss function (model, batch) -> LossOutput for one combination of forget and retain losses."""
    if forget_loss not in FORGET_LOSSES:
        raise UserError(f"forget loss must be one of {', '.join(FORGET_LOSSES)}, got {forget_loss!r}")
    if retain_loss not in RETAIN_LOSSES:
        raise UserError(f"retain loss must be one of {', '.join(RETAIN_LOSSES)}, got {retain_loss!r}")
    if forget_loss == "npo" and not npo_beta > 0:
        raise UserError(f"method.npo_beta must be positive, got {npo_beta}")
    if forget_loss == "simnpo" and not simnpo_beta > 0:
        raise UserError(f"method.simnpo_beta must be positive, got {simnpo_beta}")
    if forget_loss == "wga" and not wga_beta >= 0:
        raise UserError(f"method.wga_beta must be non-negative, got {wga_beta}")
    if forget_loss == "undial" and not undial_beta > 0:
        raise UserError(f"method.undial_beta must be positive, got {undial_beta}")
    if needs_reference(forget_loss, retain_loss):
        if reference is None:
            needing = forget_loss if forget_loss in REFERENCE_FORGET_LOSSES else "kl"
            raise UserError(f"the {needing} loss needs a reference model")
        reference.require(forget_loss, retain_loss)

    def loss_fn(model, batch: dict) -> LossOutput:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"]
        mean_nll, summed_nll, counts = token_nll_from_logits(logits, labels)
        weight = batch["weight"].to(mean_nll.dtype)
        is_forget = batch["is_forget"]
        active = weight != 0  # zero-weight rows (DDP placeholders) never need a reference
        # Zeros that stay attached to the graph: a batch whose rows all contribute nothing must still
        # backpropagate through the model (DDP synchronises gradients in backward on every process).
        zeros = mean_nll * 0.0
        per_example = zeros

        forget_rows = is_forget & active
        if forget_loss != "none" and bool(forget_rows.any()):
            if forget_loss == "ascent":
                value = -mean_nll
            elif forget_loss == "npo":
                ref = torch.zeros_like(mean_nll)
                ref[forget_rows] = reference.sequence_logp(batch, forget_rows).to(ref.dtype)
                value = npo_loss(-summed_nll, ref, npo_beta)
            elif forget_loss == "simnpo":
                value = simnpo_loss(mean_nll, simnpo_beta, simnpo_gamma)
            elif forget_loss == "wga":
                value = torch.zeros_like(mean_nll)
                value[forget_rows] = wga_per_example(logits[forget_rows], labels[forget_rows], wga_beta)
            else:  # undial: the reference's logits at the forget rows only
                ref_logits = reference.logits(batch["input_ids"][forget_rows], batch["attention_mask"][forget_rows])
                value = torch.zeros_like(mean_nll)
                value[forget_rows] = undial_per_example(logits[forget_rows], ref_logits, labels[forget_rows],
                                                        undial_beta)
            keep = forget_rows
            if forget_loss_ceiling is not None:
                level = mean_nll.detach()
                if ceiling_scope == "document":
                    with torch.no_grad():
                        level = token_nll_from_logits(logits.detach(), text_labels(batch))[0]
                keep = keep & (level < forget_loss_ceiling)
            per_example = per_example + torch.where(keep, value, zeros)

        retain_rows = ~is_forget & active
        if retain_loss != "none" and bool(retain_rows.any()):
            if retain_loss == "nll":
                value = mean_nll
            else:
                ref_logits = reference.logits(batch["input_ids"][retain_rows], batch["attention_mask"][retain_rows])
                value = torch.zeros_like(mean_nll)
                value[retain_rows] = kl_per_example(logits[retain_rows], ref_logits, labels[retain_rows])
            per_example = per_example + torch.where(retain_rows, value, zeros)

        tokens = counts if forget_loss in TOKEN_MEAN_LOSSES and retain_loss in TOKEN_MEAN_LOSSES else None
        return LossOutput(per_example=per_example * weight, nll=mean_nll, tokens=tokens)

    return loss_fn
