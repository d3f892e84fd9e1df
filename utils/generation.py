"""Greedy generation with the official semantics, batched so a 7B evaluation takes minutes, not hours.

The official scorer generates one item at a time: the raw prompt tokenised with the tokenizer's
default special tokens (no chat template), greedy decoding, `max_new_tokens=256`, and only the new
tokens decoded with `skip_special_tokens=True`. `generate_one_at_a_time` is that loop, kept as the
reference the tests and the benchmark compare against. `generate_greedy` produces the same text with
`model.generate` on batches:

* prompts are sorted by token length, longest first, so each batch carries little padding and an
  out-of-memory error shows up on the first batch rather than after an hour;
* batches are LEFT padded with an attention mask, so every row's next token is predicted at the last
  column and `generate` gives a padded row the positions of the unpadded prompt;
* every setting that could make `generate` differ from a plain argmax is pinned (greedy, one beam, the
  model's sampling knobs switched off), and each row is cut after its first EOS, which is what the
  one-at-a-time loop returns; results come back in the caller's order;
* a prompt too long to leave room for `max_new_tokens` in the model's context keeps its last tokens,
  and one warning counts such prompts (the official loop has no such guard; it would run out of memory).

Only public transformers API is used (`generate` and its documented arguments), so a new release that
renames model internals does not change what is generated.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from utils.errors import UserError
from utils.models import context_length
from utils.tokenization import special_token_layout


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a generation: the model's generation-config EOS id(s) plus the tokenizer's.

    Some models list several stop ids in `generation_config.eos_token_id`; `model.generate` stops on
    any of them, so the cut after EOS in the batched path must know all of them too.
    """
    ids: list[int] = []
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(config_eos, int):
        ids.append(config_eos)
    elif isinstance(config_eos, (list, tuple)):
        ids.extend(int(i) for i in config_eos)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(int(tokenizer.eos_token_id))
    if not ids:
        raise UserError("the tokenizer has no EOS token and the model's generation config names none")
    return ids


def _pad_id(model, tokenizer, eos_ids: list[int]) -> int:
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    pad = getattr(model.generation_config, "pad_token_id", None)
    return int(pad) if isinstance(pad, int) else eos_ids[0]


def _greedy_kwargs(max_new_tokens: int, pad_id: int, eos_ids: list[int]) -> dict[str, Any]:
    """Arguments that make `model.generate` plain greedy search whatever the model's config says."""
    return {
        "do_sample": False,
        "num_beams": 1,
        "max_new_tokens": max_new_tokens,
        "pad_token_id": pad_id,
        "eos_token_id": eos_ids,
        "use_cache": True,
        # Neutralise sampling knobs a hub generation_config may carry (they would only warn).
        "temperature": None,
        "top_p": None,
        "top_k": None,
    }


def _encode_all(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """`encode_prompt` of every prompt, in one tokenizer call."""
    _, trailing = special_token_layout(tokenizer)
    encoded = []
    for index, ids in enumerate(tokenizer(list(prompts), add_special_tokens=True)["input_ids"]):
        ids = ids[:len(ids) - len(trailing)] if trailing else ids
        if not ids:
            raise UserError(f"prompt {index} is empty after tokenisation: there is nothing to generate from")
        encoded.append(ids)
    return encoded


def _cut_at_eos(tokens: list[int], eos_ids: Sequence[int]) -> list[int]:
    """The new tokens up to and including the first EOS (what unbatched `generate` returns)."""
    stop = set(eos_ids)
    for position, token in enumerate(tokens):
        if token in stop:
            return tokens[:position + 1]
    return tokens


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def _left_pad(encoded: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, ids in enumerate(encoded):
        input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, width - len(ids):] = 1
    return input_ids, attention_mask


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices in batches of `batch_size`, longest prompts first (little padding per batch)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def keep_prompt_ends(encoded: list[list[int]], context: int | None, max_new_tokens: int,
                     warn: Callable[[str], None]) -> list[list[int]]:
    """Prompts too long to leave `max_new_tokens` in the model's context keep their last tokens.

    Past its context a model reads positions it never trained on, and attention memory grows with the
    square of the length: a 100,000-character prompt would exhaust memory instead of being scored. One
    warning counts the shortened prompts.
    """
    if context is None:
        return encoded
    budget = context - max_new_tokens
    if budget < 1:
        raise UserError(f"max_new_tokens ({max_new_tokens}) leaves no room for a prompt in the model's context "
                        f"of {context} positions")
    too_long = sum(len(ids) > budget for ids in encoded)
    if too_long:
        warn(f"{too_long} of {len(encoded)} prompts are longer than the model's context ({context} positions) "
             f"less max_new_tokens ({max_new_tokens}): each kept its last {budget} tokens")
    return [ids[-budget:] for ids in encoded]


def generate_greedy(model, tokenizer, prompts: list[str], max_new_tokens: int = 256, batch_size: int = 64,
                    progress: bool = True, warn: Callable[[str], None] = warnings.warn) -> list[str]:
    """Greedy continuations of `prompts` (new text only), identical to one-at-a-time decoding.

    Returns one string per prompt, in the order given: `model.generate` on length-sorted, left-padded
    batches of `batch_size` prompts. Prompts longer than the model's context allows are cut to their
    end (`keep_prompt_ends`), and `warn` is told how many.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    # Zero new tokens would be scored as perfect forgetting: an empty answer matches nothing.
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if not prompts:
        return []
    encoded = keep_prompt_ends(_encode_all(tokenizer, prompts), context_length(model), max_new_tokens, warn)
    eos_ids = eos_token_ids(model, tokenizer)
    pad_id = _pad_id(model, tokenizer, eos_ids)
    kwargs = _greedy_kwargs(max_new_tokens, pad_id, eos_ids)
    device = _model_device(model)
    new_tokens: list[list[int]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), \
                tqdm(total=len(prompts), desc="generating", unit="prompt", disable=not progress) as bar:
            for rows in length_sorted_batches([len(ids) for ids in encoded], batch_size):
                input_ids, attention_mask = _left_pad([encoded[i] for i in rows], pad_id)
                output = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                        **kwargs)
                for row, tokens in zip(rows, output[:, input_ids.shape[1]:].tolist()):
                    new_tokens[row] = tokens
                bar.update(len(rows))
    finally:
        model.train(was_training)
    return [tokenizer.decode(_cut_at_eos(tokens, eos_ids), skip_special_tokens=True) for tokens in new_tokens]


def generate_one_at_a_time(model, tokenizer, prompts: list[str], max_new_tokens: int = 256,
                           progress: bool = False) -> list[str]:
    """The official-style reference: each prompt alone (no padding; an all-ones mask), greedy.

    Slow on purpose; it defines what `generate_greedy` must reproduce.
    """
    eos_ids = eos_token_ids(model, tokenizer)
    kwargs = _greedy_kwargs(max_new_tokens, _pad_id(model, tokenizer, eos_ids), eos_ids)
    device = _model_device(model)
    outputs = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for ids in tqdm(_encode_all(tokenizer, prompts), desc="generating (one at a time)", unit="prompt",
                            disable=not progress):
                input_ids = torch.tensor([ids], dtype=torch.long, device=device)
                output = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
                tokens = _cut_at_eos(output[0, len(ids):].tolist(), eos_ids)
                outputs.append(tokenizer.decode(tokens, skip_special_tokens=True))
    finally:
        model.train(was_training)
    return outputs
