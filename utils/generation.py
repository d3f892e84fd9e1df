"""Greedy generation with the official semantics, batched so a 7B evaluation takes minutes, not hours.

The official scorer generates one item at a time: the raw prompt tokenised with the tokenizer's
default special tokens (no chat template), greedy decoding, `max_new_tokens=256`, and only the new
tokens decoded with `skip_special_tokens=True`. `generate_one_at_a_time` is that loop, kept as the
reference the tests and the benchmark compare against. `generate_greedy` produces the same text
faster:

* prompts are sorted by token length, longest first, and batched, so each batch carries little
  padding and an out-of-memory error shows up on the first batch rather than after an hour;
* batches are LEFT padded, so every row's next token is predicted at the last column and the KV
  cache stays aligned; the attention mask hides the padding, and `generate` (transformers 5)
  derives `position_ids` from that mask (`cumsum - 1`), so a padded row sees the same rotary
  positions 0..n-1 as the unpadded prompt: no extra handling is needed for Olmo2 or Llama;
* a row that emits EOS keeps receiving pad tokens until the whole batch is done (or
  `max_new_tokens` is reached); those are cut at the first EOS, exactly where one-at-a-time
  decoding would have stopped;
* results are returned in the caller's order.

Sampling-related settings of the model's own `generation_config` (temperature, top-p, ...) are
switched off; other entries of it (e.g. several EOS ids) are honoured, as `model.generate` would.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from utils.errors import UserError
from utils.tokenization import encode_prompt


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
    encoded = []
    for index, prompt in enumerate(prompts):
        ids = encode_prompt(tokenizer, prompt)
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


def generate_greedy(model, tokenizer, prompts: list[str], max_new_tokens: int = 256, batch_size: int = 32,
                    progress: bool = True) -> list[str]:
    """Greedy continuations of `prompts` (new text only), identical to one-at-a-time decoding.

    Returns one string per prompt, in the order given.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if not prompts:
        return []
    encoded = _encode_all(tokenizer, prompts)
    eos_ids = eos_token_ids(model, tokenizer)
    pad_id = _pad_id(model, tokenizer, eos_ids)
    kwargs = _greedy_kwargs(max_new_tokens, pad_id, eos_ids)
    device = _model_device(model)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True)
    results: list[str | None] = [None] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), tqdm(total=len(prompts), desc="generating", unit="prompt",
                                          disable=not progress) as bar:
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                width = max(len(encoded[i]) for i in rows)
                input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
                attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
                for row, index in enumerate(rows):
                    ids = encoded[index]
                    input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
                    attention_mask[row, width - len(ids):] = 1
                output = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                        **kwargs)
                new_tokens = output[:, width:].tolist()
                for row, index in enumerate(rows):
                    tokens = _cut_at_eos(new_tokens[row], eos_ids)
                    results[index] = tokenizer.decode(tokens, skip_special_tokens=True)
                bar.update(len(rows))
    finally:
        model.train(was_training)
    return [text if text is not None else "" for text in results]


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
