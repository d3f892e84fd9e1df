"""Greedy generation with the official semantics, batched so a 7B evaluation takes minutes, not hours.

The official scorer generates one item at a time: the raw prompt tokenised with the tokenizer's
default special tokens (no chat template), greedy decoding, `max_new_tokens=256`, and only the new
tokens decoded with `skip_special_tokens=True` and the tokenizer's space clean-up (`decode_new_tokens`).
`generate_one_at_a_time` is that loop, kept as the
reference the tests and the benchmark compare against and run by the strict parity mode (`generate`,
config `evaluation.parity`). `generate_greedy` produces the same text with `model.generate` on batches (in
bf16 a padded batch computes each row slightly differently, and a near-tie token can flip):

* prompts are sorted by token length, longest first, so each batch carries little padding and an
  out-of-memory error shows up on the first batch rather than after an hour;
* decoding runs in stages of growing length (16 new tokens, then 32, 64, ... up to `max_new_tokens`):
  after each stage the rows that ended leave and the rest are re-batched, continuing from their prompt
  plus their tokens so far. A batched `generate` runs until its longest row ends, so without stages a
  few long answers keep whole batches decoding; greedy decoding of the same tokens gives the same text;
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

import logging
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from utils.data.tokenization import length_sorted_batches, pad_batch, special_token_layout
from utils.errors import UserError
from utils.models.loading import context_length


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


def keep_prompt_ends(encoded: list[list[int]], context: int | None, max_new_tokens: int,
                     warn: Callable[[str], None]) -> list[list[int]]:
    """Prompts longer than the model's context keep their last tokens; one warning counts them.

    Past its context a model reads positions it never trained on, and attention memory grows with the
    square of the length: a 100,000-character prompt would exhaust memory instead of being scored. A
    prompt within the context is left whole, as the official loop leaves it, even when its answer may
    run past the context. A cut prompt keeps room for `max_new_tokens` (but at least half the context).
    """
    if context is None:
        return encoded
    budget = max(context - max_new_tokens, context // 2, 1)
    too_long = sum(len(ids) > context for ids in encoded)
    if not too_long:
        return encoded
    warn(f"{too_long} of {len(encoded)} prompts are longer than the model's context ({context} positions): "
         f"each kept its last {budget} tokens")
    return [ids[-budget:] if len(ids) > context else ids for ids in encoded]


# Rows are decoded in stages of growing length: first STAGE_TOKENS new tokens for every prompt, then twice as
# many, and so on up to max_new_tokens. After each stage the rows that emitted EOS leave, and the rest are
# re-batched and continue from their prompt plus what they generated so far, so a few long answers do not
# keep whole batches decoding (a batched `generate` runs until its longest row ends).
STAGE_TOKENS = 16

# Generation-config entries whose effect depends on where a `generate` call started (the first new token,
# the count of new tokens): with one of them set, every batch is decoded in a single stage, which honours it.
_STAGE_DEPENDENT = ("min_new_tokens", "exponential_decay_length_penalty", "begin_suppress_tokens",
                    "forced_bos_token_id", "forced_eos_token_id", "watermarking_config", "prompt_lookup_num_tokens")
_reported_single_stage: set[str] = set()
logger = logging.getLogger(__name__)


def decoding_stages(max_new_tokens: int, model=None) -> list[int]:
    """The cumulative new-token limits of the stages (see STAGE_TOKENS); one stage when the model's generation
    config holds an entry that depends on where generation started (said once per entry in the log)."""
    config = getattr(model, "generation_config", None)
    blockers = [name for name in _STAGE_DEPENDENT if getattr(config, name, None) not in (None, [], (), {})]
    guidance = getattr(config, "guidance_scale", None)
    if guidance not in (None, 1, 1.0):
        blockers.append("guidance_scale")
    if blockers:
        reason = ", ".join(blockers)
        if reason not in _reported_single_stage:
            _reported_single_stage.add(reason)
            logger.warning("generation: the model's generation config sets %s, so each batch is decoded in "
                           "one stage (the same text, slower when a few answers run long)", reason)
        return [max_new_tokens]
    stages, limit = [], STAGE_TOKENS
    while limit < max_new_tokens:
        stages.append(limit)
        limit *= 2
    return [*stages, max_new_tokens]


def decode_new_tokens(tokenizer, tokens: Sequence[int], clean_up_spaces: bool = True) -> str:
    """The new tokens as the official scorer decoded them: special tokens skipped, then the tokenizer's
    space clean-up (" ." -> ".", " ," -> ",", " n't" -> "n't", ...), which the transformers release it ran on
    applied when asked and transformers 5 no longer applies to BPE tokenizers. Exact match sees the
    difference; `clean_up_spaces=False` gives the text as transformers 5 decodes it."""
    text = tokenizer.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return tokenizer.clean_up_tokenization(text) if clean_up_spaces else text


def generate_greedy(model, tokenizer, prompts: list[str], max_new_tokens: int = 256, batch_size: int = 64,
                    progress: bool = True, warn: Callable[[str], None] = warnings.warn,
                    clean_up_spaces: bool = True) -> list[str]:
    """Greedy continuations of `prompts` (new text only), identical to one-at-a-time decoding.

    Returns one string per prompt, in the order given: `model.generate` on length-sorted, left-padded
    batches of `batch_size` prompts, in stages of growing length (`decoding_stages`). Prompts longer than
    the model's context are cut to their end (`keep_prompt_ends`), and `warn` is told how many.
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
    stop = set(eos_ids)
    pad_id = _pad_id(model, tokenizer, eos_ids)
    device = _model_device(model)
    generated: list[list[int]] = [[] for _ in prompts]
    active = list(range(len(prompts)))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), \
                tqdm(total=len(prompts), desc="generating", unit="prompt", disable=not progress) as bar:
            done = 0
            for limit in decoding_stages(max_new_tokens, model):
                kwargs = _greedy_kwargs(limit - done, pad_id, eos_ids)
                inputs = [encoded[row] + generated[row] for row in active]
                for batch in length_sorted_batches([len(ids) for ids in inputs], batch_size):
                    input_ids, attention_mask = pad_batch([inputs[i] for i in batch], pad_id, side="left")
                    output = model.generate(input_ids=input_ids.to(device),
                                            attention_mask=attention_mask.to(device), **kwargs)
                    for i, tokens in zip(batch, output[:, input_ids.shape[1]:].tolist()):
                        generated[active[i]] += _cut_at_eos(tokens, eos_ids)
                active = [row for row in active if not (generated[row] and generated[row][-1] in stop)]
                done = limit
                # Rows still active after the last stage are done too: they used every new token.
                bar.update((len(prompts) if limit == max_new_tokens else len(prompts) - len(active)) - bar.n)
                if not active:
                    break
    finally:
        model.train(was_training)
    return [decode_new_tokens(tokenizer, tokens, clean_up_spaces) for tokens in generated]


def generate_one_at_a_time(model, tokenizer, prompts: list[str], max_new_tokens: int = 256,
                           progress: bool = False, clean_up_spaces: bool = True,
                           warn: Callable[[str], None] | None = None) -> list[str]:
    """The official-style reference: each prompt alone (no padding; an all-ones mask), greedy, one `generate`
    call of `max_new_tokens` per prompt (no stages), in the model's own precision.

    Slow on purpose; it defines what `generate_greedy` must reproduce, and it is the strict parity mode of the
    evaluation. Given `warn`, prompts longer than the model's context keep their ends as in `generate_greedy`
    (the official loop has no such guard); without it every prompt is used whole.
    """
    encoded = _encode_all(tokenizer, prompts)
    if warn is not None:
        encoded = keep_prompt_ends(encoded, context_length(model), max_new_tokens, warn)
    eos_ids = eos_token_ids(model, tokenizer)
    kwargs = _greedy_kwargs(max_new_tokens, _pad_id(model, tokenizer, eos_ids), eos_ids)
    device = _model_device(model)
    outputs = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for ids in tqdm(encoded, desc="generating (one at a time)", unit="prompt",
                            disable=not progress):
                input_ids = torch.tensor([ids], dtype=torch.long, device=device)
                output = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
                tokens = _cut_at_eos(output[0, len(ids):].tolist(), eos_ids)
                outputs.append(decode_new_tokens(tokenizer, tokens, clean_up_spaces))
    finally:
        model.train(was_training)
    return outputs


PARITY_MODES = ("batched", "strict")


def generate(model, tokenizer, prompts: list[str], *, parity: str = "batched", max_new_tokens: int = 256,
             batch_size: int = 64, progress: bool = True, warn: Callable[[str], None] = warnings.warn,
             clean_up_spaces: bool = True) -> list[str]:
    """The evaluation's generations in the parity mode asked for (config `evaluation.parity`): "batched" is
    `generate_greedy`; "strict" is `generate_one_at_a_time`, the official loop, whose text cannot depend on
    which prompts share a batch (in bf16 a batched row can flip a near-tie token)."""
    if parity == "batched":
        return generate_greedy(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                               progress=progress, warn=warn, clean_up_spaces=clean_up_spaces)
    if parity == "strict":
        if not prompts:
            return []
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        return generate_one_at_a_time(model, tokenizer, prompts, max_new_tokens=max_new_tokens, progress=progress,
                                      clean_up_spaces=clean_up_spaces, warn=warn)
    raise UserError(f"evaluation.parity must be one of {', '.join(PARITY_MODES)}, got {parity!r}")
