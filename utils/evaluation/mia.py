"""Membership inference on whole documents: the official loss attack plus three common stronger ones.

The official MIA (docs/benchmark.md, "Official metrics") is the *loss attack*: per document the mean token NLL with
`labels = input_ids` (Hugging Face's causal-LM loss over the whole document, tokenised with the
tokenizer's default special tokens), then the ROC AUC of `-NLL` with members labelled 1. The
benchmark's MIA score is `1 - 2|AUC - 0.5|`.

A model can fool the loss attack while the forget documents remain detectable, so the same forward
pass also yields what three other attacks need (each gives a score where higher = more likely a
member):

* **zlib** (Carlini et al. 2021, as implemented in MIMIR and the Min-K%++ code):
  `-mean_nll / len(zlib.compress(text.encode("utf-8")))`. Dividing by the compressed size calibrates
  for how predictable the text is in itself (lists and boilerplate have low loss for every model).
* **Min-K%** (Shi et al. 2024): the mean of the lowest `k` fraction of the token log-probabilities:
  a member has few very surprising tokens.
* **Min-K%++** (Zhang et al. 2024): the same over token scores standardised by the model's own
  next-token distribution, `(log p(x_t) - mu_t) / sigma_t` with `mu_t = sum_v p(v) log p(v)` and
  `sigma_t^2 = sum_v p(v) (log p(v) - mu_t)^2` (the centred form of `E[log^2 p] - mu_t^2`,
  numerically safer in float32): a member token sits at a local maximum of the likelihood.

Batches are length-sorted and right padded; padding is masked and excluded from every statistic,
so a document's numbers do not depend on which batch it lands in. The logits are processed row by
row in float32, because a full batch of log-softmaxed logits over a 100k vocabulary would not fit.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from utils.data.tokenization import length_sorted_batches, pad_batch
from utils.errors import UserError
from utils.evaluation.metrics import mia_auc, mia_score, roc_auc
from utils.evaluation.sharding import ALONE, Shards
from utils.models.loading import context_length

DEFAULT_K = 0.2
ATTACKS = ("loss", "zlib", "min_k", "min_k_plus_plus")


@dataclass
class DocumentStatistics:
    """What every attack needs about one document, from one forward pass.

    `token_log_probs[i]` is `log p(x_{i+1} | x_{<=i})`: one entry per predicted token (the first
    token has no prediction). `mu` / `sigma` are per predicted position too, and None when the
    distribution statistics were not requested.
    """

    nll: float
    token_log_probs: list[float]
    mu: list[float] | None
    sigma: list[float] | None
    zlib_bytes: int
    n_tokens: int


def zlib_entropy(text: str) -> int:
    """Length in bytes of the zlib-compressed UTF-8 text (the zlib attack's reference entropy)."""
    return len(zlib.compress(text.encode("utf-8")))


def _encode_documents(tokenizer, documents: Sequence[str], max_length: int | None) -> list[list[int]]:
    encoded = []
    for index, document in enumerate(documents):
        # Default special tokens, trailing ones included: exactly `tokenizer(document)` as the official loss.
        ids = tokenizer(document, add_special_tokens=True)["input_ids"]
        if max_length is not None:
            ids = ids[:max_length]
        if len(ids) < 2:
            raise UserError(f"MIA document {index} has fewer than 2 tokens: its loss is undefined")
        encoded.append(ids)
    return encoded


def keep_document_starts(encoded: list[list[int]], context: int | None,
                         warn: Callable[[str], None]) -> list[list[int]]:
    """Documents longer than the model's context keep their first `context` tokens; one warning counts them.

    Beyond its context the model reads positions it never trained on, so the loss there says nothing
    about membership (and a very long document would exhaust memory).
    """
    if context is None:
        return encoded
    too_long = sum(len(ids) > context for ids in encoded)
    if too_long:
        warn(f"MIA: {too_long} of {len(encoded)} documents are longer than the model's context "
             f"({context} positions): each was scored on its first {context} tokens")
    return [ids[:context] for ids in encoded]


def token_statistics(model, tokenizer, documents: Sequence[str], batch_size: int = 16,
                     max_length: int | None = None, distribution_stats: bool = True,
                     progress: bool = True, warn: Callable[[str], None] = warnings.warn,
                     one_at_a_time: bool = False) -> list[DocumentStatistics]:
    """Per-document NLL, token log-probs and (optionally) Min-K%++ moments, in the input order.

    `distribution_stats=False` skips mu/sigma (a few vocabulary-sized operations per token) when
    only the loss is wanted. `max_length` truncates each tokenised document to its first tokens; so
    does the model's context, and `warn` is told how many documents that cut. `one_at_a_time` (the strict
    parity mode) is the official loop: each document alone, and its NLL the model's own loss with
    labels = input ids.
    """
    if one_at_a_time:
        batch_size = 1
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    encoded = keep_document_starts(_encode_documents(tokenizer, documents, max_length), context_length(model), warn)
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    results: list[DocumentStatistics | None] = [None] * len(encoded)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), tqdm(total=len(encoded), desc="document losses", unit="doc",
                                          disable=not progress) as bar:
            for rows in length_sorted_batches([len(ids) for ids in encoded], batch_size):
                input_ids, attention_mask = pad_batch([encoded[i] for i in rows], pad_id)
                input_ids = input_ids.to(device)
                outputs = model(input_ids=input_ids, attention_mask=attention_mask.to(device),
                                labels=input_ids if one_at_a_time else None, use_cache=False)
                logits = outputs.logits
                for row, index in enumerate(rows):
                    n = len(encoded[index])
                    results[index] = _row_statistics(logits[row, :n - 1], input_ids[row, 1:n],
                                                     documents[index], n, distribution_stats)
                if one_at_a_time:
                    # The official number itself, not our float32 re-computation of it.
                    results[rows[0]].nll = float(outputs.loss)
                del logits, outputs
                bar.update(len(rows))
    finally:
        model.train(was_training)
    return [r for r in results if r is not None]


def _row_statistics(logits: torch.Tensor, targets: torch.Tensor, text: str, n_tokens: int,
                    distribution_stats: bool) -> DocumentStatistics:
    # float32 like transformers' loss (it upcasts logits before cross-entropy).
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    token_log_probs = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    nll = float(-token_log_probs.double().mean())
    mu_list = sigma_list = None
    if distribution_stats:
        probs = log_probs.exp()
        # p * log p is 0 where p underflows (and where log p = -inf for masked vocabulary entries).
        safe_log_probs = torch.where(probs > 0, log_probs, torch.zeros_like(log_probs))
        mu = (probs * safe_log_probs).sum(-1)
        variance = (probs * (safe_log_probs - mu.unsqueeze(-1)) ** 2).sum(-1)
        mu_list = mu.tolist()
        sigma_list = variance.clamp_min(0).sqrt().tolist()
    return DocumentStatistics(nll=nll, token_log_probs=token_log_probs.tolist(), mu=mu_list, sigma=sigma_list,
                              zlib_bytes=zlib_entropy(text), n_tokens=n_tokens)


def document_nll(model, tokenizer, documents: Sequence[str], batch_size: int = 16, max_length: int | None = None,
                 progress: bool = True, warn: Callable[[str], None] = warnings.warn) -> list[float]:
    """The official per-document loss: mean token NLL with labels = input ids, in the input order."""
    stats = token_statistics(model, tokenizer, documents, batch_size=batch_size, max_length=max_length,
                             distribution_stats=False, progress=progress, warn=warn)
    return [s.nll for s in stats]


# ---- attacks: higher score = more likely a member -------------------------------------------------

def loss_attack(stats: Sequence[DocumentStatistics]) -> list[float]:
    """-mean NLL (the official attack)."""
    return [-s.nll for s in stats]


def zlib_attack(stats: Sequence[DocumentStatistics]) -> list[float]:
    """-mean NLL / zlib-compressed byte length (the MIMIR / Min-K%++ definition, mean not sum)."""
    return [-s.nll / s.zlib_bytes for s in stats]


def _lowest_fraction_mean(values: Sequence[float], k: float) -> float:
    # int() as in the reference implementations, but at least one token so short documents score.
    count = max(1, int(len(values) * k))
    return float(sum(sorted(values)[:count]) / count)


def min_k_attack(stats: Sequence[DocumentStatistics], k: float = DEFAULT_K) -> list[float]:
    """Mean of the lowest `k` fraction of token log-probabilities."""
    _check_k(k)
    return [_lowest_fraction_mean(s.token_log_probs, k) for s in stats]


def min_k_plus_plus_scores(stats: DocumentStatistics) -> list[float]:
    """Per-token Min-K%++ scores `(log p(x_t) - mu_t) / sigma_t` of one document."""
    if stats.mu is None or stats.sigma is None:
        raise ValueError("Min-K%++ needs token_statistics(..., distribution_stats=True)")
    # A fully confident position has sigma 0; the floor keeps its score finite (and very large
    # in magnitude, which is what the limit is).
    return [(lp - mu) / max(sigma, 1e-12) for lp, mu, sigma in zip(stats.token_log_probs, stats.mu, stats.sigma)]


def min_k_plus_plus_attack(stats: Sequence[DocumentStatistics], k: float = DEFAULT_K) -> list[float]:
    """Mean of the lowest `k` fraction of standardised token scores (Min-K%++)."""
    _check_k(k)
    return [_lowest_fraction_mean(min_k_plus_plus_scores(s), k) for s in stats]


def _check_k(k: float) -> None:
    if not 0 < k <= 1:
        raise ValueError(f"k must be in (0, 1], got {k}")


def attack_aucs(member_stats: Sequence[DocumentStatistics], nonmember_stats: Sequence[DocumentStatistics],
                k: float = DEFAULT_K) -> dict[str, float]:
    """ROC AUC of every attack (members labelled 1). "loss" is computed exactly as the official one.

    "min_k_plus_plus" is left out when the statistics lack the distribution moments.
    """
    if not member_stats or not nonmember_stats:
        raise UserError("the MIA needs at least one member and one non-member document")
    out = {"loss": mia_auc([s.nll for s in member_stats], [s.nll for s in nonmember_stats])}
    attacks: dict[str, Callable[[Sequence[DocumentStatistics]], list[float]]] = {
        "zlib": zlib_attack,
        "min_k": lambda stats: min_k_attack(stats, k),
    }
    if all(s.mu is not None for s in (*member_stats, *nonmember_stats)):
        attacks["min_k_plus_plus"] = lambda stats: min_k_plus_plus_attack(stats, k)
    for name, attack in attacks.items():
        out[name] = roc_auc(attack(member_stats), attack(nonmember_stats))
    return out


def run_mia(model, tokenizer, member_docs: Sequence[str], nonmember_docs: Sequence[str], batch_size: int = 16,
            progress: bool = True, max_length: int | None = None, k: float = DEFAULT_K,
            warn: Callable[[str], None] = warnings.warn, shards: Shards = ALONE,
            parity: str = "batched") -> dict[str, Any]:
    """All attacks over members and non-members in one pass each document (each process its `shards` share;
    `parity="strict"`: one document at a time, see `token_statistics`).

    Returns `{"member_nll", "nonmember_nll", "auc" (official loss AUC), "score" (1 - 2|auc - 0.5|),
    "attacks": {"loss", "zlib", "min_k", "min_k_plus_plus"}}`.
    """
    if not member_docs or not nonmember_docs:
        raise UserError("the MIA needs at least one member and one non-member document")
    # One call so members and non-members share batches (fewer, fuller batches).
    stats = shards.map(
        lambda documents, warn_share: token_statistics(model, tokenizer, documents, batch_size=batch_size,
                                                       max_length=max_length, distribution_stats=True,
                                                       progress=progress, warn=warn_share,
                                                       one_at_a_time=parity == "strict"),
        [*member_docs, *nonmember_docs], warn)
    member_stats, nonmember_stats = stats[:len(member_docs)], stats[len(member_docs):]
    attacks = attack_aucs(member_stats, nonmember_stats, k)
    return {
        "member_nll": [s.nll for s in member_stats],
        "nonmember_nll": [s.nll for s in nonmember_stats],
        "auc": attacks["loss"],
        "score": mia_score(attacks["loss"]),
        "attacks": attacks,
    }
