"""Memorisation metrics that unlearning papers cite, reported beside the official terms and never part of the
official final score.

Both read one teacher-forced forward pass over each item's prompt and answer: at every answer token, the model's
most likely next token given the true tokens before it.

* **exact memorisation** (EM; Tirumala et al. 2022, reported by TOFU and MUSE tooling): the share of the answer's
  tokens predicted right.
* **extraction strength** (ES; after Carlini et al. 2021's extraction, as OpenUnlearning reports it): 1 - k/n, where
  n is the answer's token count and k the shortest prefix of the answer after which every remaining token is
  predicted right; k = n when even the last token is wrong, so ES is 0 for an answer nothing of which can be
  extracted (OpenUnlearning's loop stops at k = n - 1 there and reports 1/n).

An answer is its text's tokens after the prompt, as training encodes it (`encode_item`) but without the end-of-text
token, the first answer token included (it is predicted from the prompt); an item longer than the model's context
keeps its end, as in training.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from utils.data.lume import TASKS, Item
from utils.data.tokenization import collate, encode_item
from utils.evaluation.sharding import ALONE, Shards
from utils.models.loading import context_length

METRICS = ("exact_memorisation", "extraction_strength")


def exact_memorisation(predicted: Sequence[int], true: Sequence[int]) -> float | None:
    """The share of positions where `predicted` equals `true` (None for an empty answer)."""
    if not true:
        return None
    return sum(p == t for p, t in zip(predicted, true, strict=True)) / len(true)


def extraction_strength(predicted: Sequence[int], true: Sequence[int]) -> float | None:
    """1 - k/n, k the smallest index from which `predicted` equals `true` to the end (n when none; None for an
    empty answer)."""
    n = len(true)
    if n == 0:
        return None
    if len(predicted) != n:
        raise ValueError(f"{len(predicted)} predictions for {n} answer tokens")
    k = n
    while k > 0 and predicted[k - 1] == true[k - 1]:
        k -= 1
    return 1.0 - k / n


@torch.inference_mode()
def answer_predictions(model, tokenizer, items: Sequence[Item], batch_size: int) -> list[tuple[list[int], list[int]]]:
    """Per item (predicted, true) answer tokens from one teacher-forced pass: the argmax at each position before an
    answer token, and that token."""
    device = next(model.parameters()).device
    positions = context_length(model)
    examples = [encode_item(tokenizer, item, "output", max_length=positions, add_eos=False) for item in items]
    out: list[tuple[list[int], list[int]]] = []
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start:start + batch_size], tokenizer.pad_token_id)
        logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
        predicted = logits[:, :-1].argmax(dim=-1).cpu()
        targets = batch["labels"][:, 1:]
        for row in range(targets.shape[0]):
            answer = targets[row] != -100
            out.append((predicted[row][answer].tolist(), targets[row][answer].tolist()))
    return out


def item_memorisation(model, tokenizer, items: Sequence[Item], batch_size: int, shards: Shards = ALONE,
                      warn=None) -> list[dict[str, float | None]]:
    """Per item {metric: value}; under several processes each computes its share."""
    def work(part: list, _warn) -> list[dict[str, float | None]]:
        pairs = answer_predictions(model, tokenizer, part, batch_size)
        return [{"exact_memorisation": exact_memorisation(p, t), "extraction_strength": extraction_strength(p, t)}
                for p, t in pairs]

    return shards.map(work, list(items), warn or (lambda _message: None))


def _mean(values: list[float | None]) -> float | None:
    measured = [v for v in values if v is not None]
    return sum(measured) / len(measured) if measured else None


def memorisation_block(model, tokenizer, items: Sequence[Item], batch_size: int, shards: Shards = ALONE,
                       warn=None) -> dict:
    """results.json's `memorisation`: per split the mean of each metric over its items, overall and per task, and
    the item count."""
    values = item_memorisation(model, tokenizer, items, batch_size, shards, warn)
    block: dict = {}
    for split in dict.fromkeys(item.split for item in items):
        chosen = [(item, value) for item, value in zip(items, values) if item.split == split]
        entry: dict = {metric: _mean([value[metric] for _, value in chosen]) for metric in METRICS}
        entry["by_task"] = {task: {metric: _mean([value[metric] for item, value in chosen if item.task == task])
                                   for metric in METRICS}
                            for task in TASKS if any(item.task == task for item, _ in chosen)}
        entry["items"] = len(chosen)
        block[split] = entry
    return block
