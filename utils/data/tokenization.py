"""Turning benchmark items into training examples, and padding them into batches.

The prompt part of a training sequence is tokenised exactly as the evaluation tokenises its prompt
(the raw `input` with the tokenizer's default special tokens), and the answer is `" " + output`
without special tokens, then EOS. Tokenising the two parts separately, rather than the joined text,
guarantees the model trains on the very token boundary it will generate from; the EOS teaches it to
stop, which the exact-match knowledge score requires.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

IGNORE_INDEX = -100


@dataclass
class Example:
    """One training sequence with its role in an unlearning schedule."""

    input_ids: list[int]
    labels: list[int]
    item_id: str = ""
    role: str = "train"  # "forget", "retain" or "train"
    weight: float = 1.0
    # Sequence log-likelihood of the labelled tokens under the reference (pre-unlearning) model,
    # precomputed once for NPO when the reference is not available for free (full / last-k training).
    reference_logp: float | None = None
    # A second sequence trained in the same step as this one (same prompt, another answer; e.g. IdkDPO's
    # refusal, preferred over this example's own answer), with its labels and reference log-likelihood
    # under the conventions above. None: no pair.
    pair_input_ids: list[int] | None = None
    pair_labels: list[int] | None = None
    pair_reference_logp: float | None = None

    @property
    def token_count(self) -> int:
        """Tokens this example puts through the model in a step: its own, and its pair's when it has one."""
        return len(self.input_ids) + len(self.pair_input_ids or ())


def special_token_layout(tokenizer) -> tuple[list[int], list[int]]:
    """(leading, trailing) special ids the tokenizer adds by default (BOS for Llama-style, none for GPT-style)."""
    plain = tokenizer("hello", add_special_tokens=False)["input_ids"]
    full = tokenizer("hello", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return full[:start], full[start + len(plain):]
    return [], []


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """The prompt as the official scorer tokenises it (default special tokens), minus trailing specials."""
    _, trailing = special_token_layout(tokenizer)
    ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    return ids[:len(ids) - len(trailing)] if trailing else ids


def encode_pair(tokenizer, prompt: str, answer: str, loss_on: str = "output", max_length: int | None = None,
                item_id: str = "", role: str = "train", weight: float = 1.0, add_eos: bool = True) -> Example:
    """`prompt + " " + answer (+ EOS)` with the loss on the answer (or on everything but leading specials)."""
    prompt_ids = encode_prompt(tokenizer, prompt)
    answer_ids = tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
    answer_ids += [tokenizer.eos_token_id] if add_eos else []
    input_ids = prompt_ids + answer_ids
    if loss_on == "output":
        labels = [IGNORE_INDEX] * len(prompt_ids) + answer_ids
    else:
        leading, _ = special_token_layout(tokenizer)
        labels = [IGNORE_INDEX] * len(leading) + input_ids[len(leading):]
    if max_length is not None and len(input_ids) > max_length:
        # Keep the end: the answer is what is learnt or forgotten.
        input_ids, labels = input_ids[-max_length:], labels[-max_length:]
    return Example(input_ids, labels, item_id, role, weight)


def encode_text(tokenizer, text: str, max_length: int | None = None, item_id: str = "", role: str = "train",
                weight: float = 1.0, add_eos: bool = True) -> Example:
    """A plain document (pre-training corpus, MIA) with the loss on every token after leading specials."""
    leading, _ = special_token_layout(tokenizer)
    ids = encode_prompt(tokenizer, text) + ([tokenizer.eos_token_id] if add_eos else [])
    labels = [IGNORE_INDEX] * len(leading) + ids[len(leading):]
    if max_length is not None and len(ids) > max_length:
        ids, labels = ids[:max_length], labels[:max_length]
    return Example(ids, labels, item_id, role, weight)


def encode_item(tokenizer, item, loss_on: str = "output", max_length: int | None = None, role: str | None = None,
                weight: float = 1.0, add_eos: bool = True) -> Example:
    """A benchmark `utils.data.lume.Item` as a training example."""
    return encode_pair(tokenizer, item.input, item.output, loss_on, max_length, item.id, role or item.split, weight,
                       add_eos)


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int,
              side: Literal["left", "right"] = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention_mask), both `long` and as wide as the longest sequence, padded with `pad_id`.

    Right padding suits a forward pass over whole sequences (training, document losses); left padding
    puts every row's last token in the last column, where generation and next-token scoring read it.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    width = max(len(ids) for ids in sequences)
    ids_rows, mask_rows = [], []
    for ids in sequences:
        padding = width - len(ids)
        if side == "right":
            ids_rows.append([*ids, *[pad_id] * padding])
            mask_rows.append([1] * len(ids) + [0] * padding)
        else:
            ids_rows.append([*[pad_id] * padding, *ids])
            mask_rows.append([0] * padding + [1] * len(ids))
    return torch.tensor(ids_rows, dtype=torch.long), torch.tensor(mask_rows, dtype=torch.long)


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices in batches of `batch_size`, longest first (little padding per batch; ties keep their order)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def collate(examples: list[Example], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors; `weight` and `is_forget` carry each example's role into the loss.

    When any example carries a precomputed `reference_logp`, the batch gets a `reference_logp` tensor
    (NaN for the examples without one, e.g. retain examples in a mixed batch). When any example carries a
    paired sequence, the batch gets `has_pair` and the pairs padded alike (`pair_input_ids`,
    `pair_attention_mask`, `pair_labels`, `pair_reference_logp`); a row without a pair holds one padding
    token with no label there.
    """
    input_ids, attention_mask = pad_batch([e.input_ids for e in examples], pad_token_id)
    labels, _ = pad_batch([e.labels for e in examples], IGNORE_INDEX)
    batch = {
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": attention_mask,
        "weight": torch.tensor([e.weight for e in examples], dtype=torch.float32),
        "is_forget": torch.tensor([e.role == "forget" for e in examples], dtype=torch.bool),
    }
    if any(e.reference_logp is not None for e in examples):
        batch["reference_logp"] = torch.tensor(
            [float("nan") if e.reference_logp is None else e.reference_logp for e in examples], dtype=torch.float32)
    if any(e.pair_input_ids is not None for e in examples):
        paired = [e.pair_input_ids is not None for e in examples]
        batch["has_pair"] = torch.tensor(paired, dtype=torch.bool)
        batch["pair_input_ids"], batch["pair_attention_mask"] = pad_batch(
            [e.pair_input_ids if has else [pad_token_id] for e, has in zip(examples, paired)], pad_token_id)
        batch["pair_labels"], _ = pad_batch(
            [e.pair_labels if has else [IGNORE_INDEX] for e, has in zip(examples, paired)], IGNORE_INDEX)
        batch["pair_reference_logp"] = torch.tensor(
            [float("nan") if e.pair_reference_logp is None else e.pair_reference_logp for e in examples],
            dtype=torch.float32)
    return batch
