"""Turning benchmark items into training examples, and padding them into batches.

The prompt part of a training sequence is tokenised exactly as the evaluation tokenises its prompt
(the raw `input` with the tokenizer's default special tokens), and the answer is `" " + output`
without special tokens, then EOS. Tokenising the two parts separately, rather than the joined text,
guarantees the model trains on the very token boundary it will generate from; the EOS teaches it to
stop, which the exact-match knowledge score requires.
"""

from __future__ import annotations

from dataclasses import dataclass

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
                item_id: str = "", role: str = "train", weight: float = 1.0) -> Example:
    """`prompt + " " + answer + EOS` with the loss on the answer (or on everything but leading specials)."""
    prompt_ids = encode_prompt(tokenizer, prompt)
    answer_ids = tokenizer(" " + answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
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
                weight: float = 1.0) -> Example:
    """A benchmark `utils.data.Item` as a training example."""
    return encode_pair(tokenizer, item.input, item.output, loss_on, max_length, item.id, role or item.split, weight)


def collate(examples: list[Example], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors; `weight` and `is_forget` carry each example's role into the loss.

    When any example carries a precomputed `reference_logp`, the batch gets a `reference_logp` tensor
    (NaN for the examples without one, e.g. retain examples in a mixed batch).
    """
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention_mask[row, :n] = 1
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
    return batch
