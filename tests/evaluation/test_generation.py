"""Batched greedy generation must reproduce the official one-at-a-time decoding exactly."""

from __future__ import annotations

import random

import pytest
import torch

from utils.data.tokenization import encode_prompt
from utils.errors import UserError
from utils.evaluation import generation
from utils.evaluation.generation import eos_token_ids, generate_greedy, generate_one_at_a_time

from ..conftest import briefly_trained_model, random_sentences


@pytest.fixture(scope="module")
def world():
    """A tiny Olmo2 trained for 30 steps on 8 sentences, each followed by EOS (so it learns to stop)."""
    sentences = random_sentences(100)
    model, tokenizer = briefly_trained_model(sentences, end_with_eos=True)
    return model, tokenizer, sentences


def _prompts(sentences: list[str]) -> list[str]:
    # Very different lengths: a single word up to four sentences; some are whole training sentences
    # (the model ends them with EOS at once), others are cut mid-sentence.
    return [sentences[0][:10], "the", sentences[1], " ".join(sentences[2:6]), "moon sun star bird",
            sentences[3][:15], "a", sentences[5], "green river", " ".join(sentences[10:13])]


def _manual_greedy(model, tokenizer, prompt: str, max_new_tokens: int) -> tuple[list[int], bool]:
    """Argmax decoding by full forward passes (no cache, no generate): (new tokens, hit EOS)."""
    ids = encode_prompt(tokenizer, prompt)
    new: list[int] = []
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            logits = model(input_ids=torch.tensor([ids + new]), use_cache=False).logits[0, -1]
            token = int(logits.argmax())
            new.append(token)
            if token == tokenizer.eos_token_id:
                return new, True
    return new, False


def test_batched_equals_one_at_a_time(world) -> None:
    model, tokenizer, sentences = world
    prompts = _prompts(sentences)
    batched = generate_greedy(model, tokenizer, prompts, max_new_tokens=20, batch_size=4, progress=False)
    reference = generate_one_at_a_time(model, tokenizer, prompts, max_new_tokens=20)
    assert batched == reference
    # The model is trained enough that prompts lead to different continuations.
    assert len(set(batched)) >= 4


def test_batch_size_does_not_matter(world) -> None:
    model, tokenizer, sentences = world
    prompts = _prompts(sentences)
    outputs = [generate_greedy(model, tokenizer, prompts, max_new_tokens=20, batch_size=size, progress=False)
               for size in (1, 3, 32)]
    assert outputs[0] == outputs[1] == outputs[2]


def test_order_is_preserved(world) -> None:
    model, tokenizer, sentences = world
    prompts = _prompts(sentences)
    forward = generate_greedy(model, tokenizer, prompts, max_new_tokens=20, batch_size=4, progress=False)
    permutation = list(range(len(prompts)))
    random.Random(1).shuffle(permutation)
    shuffled = generate_greedy(model, tokenizer, [prompts[i] for i in permutation], max_new_tokens=20,
                               batch_size=4, progress=False)
    assert shuffled == [forward[i] for i in permutation]


def test_stops_at_eos_and_matches_manual_argmax(world) -> None:
    model, tokenizer, sentences = world
    prompts = _prompts(sentences)
    batched = generate_greedy(model, tokenizer, prompts, max_new_tokens=20, batch_size=4, progress=False)
    hit = []
    for prompt, text in zip(prompts, batched):
        tokens, stopped = _manual_greedy(model, tokenizer, prompt, 20)
        hit.append(stopped)
        if stopped:
            assert tokens[-1] == tokenizer.eos_token_id
            tokens = tokens[:-1]
        assert text == tokenizer.decode(tokens, skip_special_tokens=True)
    # Both paths are exercised: some rows finish early (then leave the batch), some run to max_new_tokens.
    assert any(hit) and not all(hit)


def test_eos_row_in_a_batch_is_cut(world) -> None:
    """A row that stops at once shares a batch with rows that run on: its text stays as alone."""
    model, tokenizer, sentences = world
    stopping = next(p for p in _prompts(sentences) if _manual_greedy(model, tokenizer, p, 20)[1])
    running = next(p for p in _prompts(sentences) if not _manual_greedy(model, tokenizer, p, 20)[1])
    together = generate_greedy(model, tokenizer, [stopping, running], max_new_tokens=20, batch_size=2,
                               progress=False)
    alone = generate_one_at_a_time(model, tokenizer, [stopping, running], max_new_tokens=20)
    assert together == alone


def test_edge_cases(world) -> None:
    model, tokenizer, _ = world
    assert generate_greedy(model, tokenizer, [], progress=False) == []
    with pytest.raises(UserError):
        generate_greedy(model, tokenizer, ["ok", ""], progress=False)
    assert tokenizer.eos_token_id in eos_token_ids(model, tokenizer)
    model.train()
    generate_greedy(model, tokenizer, ["the"], max_new_tokens=2, progress=False)
    assert model.training  # the caller's mode is restored
    model.eval()


@pytest.mark.parametrize("max_new_tokens", [0, -1])
def test_no_new_tokens_is_an_error_not_an_empty_answer(world, max_new_tokens) -> None:
    """An empty generation matches no gold answer, so it would be scored as perfect forgetting."""
    model, tokenizer, _ = world
    with pytest.raises(ValueError, match=f"max_new_tokens must be at least 1, got {max_new_tokens}"):
        generate_greedy(model, tokenizer, ["the"], max_new_tokens=max_new_tokens, progress=False)


def test_prompts_beyond_the_context_keep_their_end_and_are_counted(world) -> None:
    model, tokenizer, sentences = world
    context = model.config.max_position_embeddings
    long_prompt = " ".join(sentences) * 3  # thousands of tokens
    assert len(tokenizer(long_prompt)["input_ids"]) > context
    warned: list[str] = []
    outputs = generate_greedy(model, tokenizer, [long_prompt, "the"], max_new_tokens=8, progress=False,
                              warn=warned.append)
    assert warned == [(f"1 of 2 prompts are longer than the model's context ({context} positions): "
                       f"each kept its last {context - 8} tokens")]
    # The long prompt is answered as its last tokens alone would be; the short one as if alone.
    end = tokenizer.decode(tokenizer(long_prompt)["input_ids"][-(context - 8):])
    assert tokenizer(end)["input_ids"] == tokenizer(long_prompt)["input_ids"][-(context - 8):]
    assert outputs == [generate_greedy(model, tokenizer, [end], max_new_tokens=8, progress=False)[0],
                       generate_greedy(model, tokenizer, ["the"], max_new_tokens=8, progress=False)[0]]


def test_keep_prompt_ends_cuts_only_prompts_beyond_the_context() -> None:
    assert generation.keep_prompt_ends([[1, 2, 3]], None, 10, print) == [[1, 2, 3]]
    # Within the context a prompt stays whole, as in the official loop, even when its answer may run past it.
    assert generation.keep_prompt_ends([[1, 2, 3, 4, 5, 6]], 8, 4, print) == [[1, 2, 3, 4, 5, 6]]
    warned: list[str] = []
    long = list(range(20))
    # Room for the answer, but never less than half the context.
    assert generation.keep_prompt_ends([long, [1]], 8, 2, warned.append) == [long[-6:], [1]]
    assert generation.keep_prompt_ends([long], 8, 8, warned.append) == [long[-4:]]
    assert len(warned) == 2


def _staggered_prompts(sentences: list[str]) -> list[str]:
    """Prompts whose greedy continuations stop at very different steps: whole training sentences stop at
    the first token (EOS), cut sentences after a few tokens, "the" never within 40."""
    return ([sentences[1], "a", sentences[5]] + [s[:20] for s in sentences[:8]]
            + ["green river", "green sat under", "moon sun star bird", "the"])


def test_rows_finishing_at_very_different_steps(world) -> None:
    """In one batch, rows stop at the first token, after a few, after many, or never: each row's text is
    what it is alone, whichever rows leave the batch (and the cache) before it."""
    model, tokenizer, sentences = world
    prompts = _staggered_prompts(sentences)
    runs = [_manual_greedy(model, tokenizer, prompt, 40) for prompt in prompts]
    steps = sorted(len(tokens) for tokens, _ in runs)
    assert steps[0] == 1 and steps[-1] == 40 and len(set(steps)) >= 6  # the premise
    reference = generate_one_at_a_time(model, tokenizer, prompts, max_new_tokens=40)
    for batch_size in (len(prompts), 5, 2):
        assert generate_greedy(model, tokenizer, prompts, max_new_tokens=40, batch_size=batch_size,
                               progress=False) == reference
    for (tokens, stopped), text in zip(runs, reference):
        assert text == tokenizer.decode(tokens[:-1] if stopped else tokens, skip_special_tokens=True)


def _count_generate_calls(model, monkeypatch) -> list[tuple[int, int, int]]:
    """(rows, padded width, max_new_tokens) of every `model.generate` call."""
    calls = []
    original = model.generate

    def counting(*args, **kwargs):
        calls.append((*kwargs["input_ids"].shape, kwargs["max_new_tokens"]))
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "generate", counting)
    return calls


def test_batches_go_through_generate_in_stages_longest_first(world, monkeypatch) -> None:
    """Every batch is one `model.generate` call on left-padded prompts, the longest first; after the first
    stage (16 new tokens) only the rows that have not ended go on, re-batched, up to 32 and then 40."""
    model, tokenizer, sentences = world
    prompts = _staggered_prompts(sentences)
    reference = generate_one_at_a_time(model, tokenizer, prompts, max_new_tokens=40)
    assert generation.decoding_stages(40, model) == [16, 32, 40]
    calls = _count_generate_calls(model, monkeypatch)
    assert generate_greedy(model, tokenizer, prompts, max_new_tokens=40, batch_size=4, progress=False) == reference
    first, later = calls[:4], calls[4:]
    assert [(rows, steps) for rows, _, steps in first] == [(4, 16), (4, 16), (4, 16), (3, 16)]
    widths = [width for _, width, _ in first]
    assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1]
    # Some rows ended in the first stage; the ones left went on for 16 more tokens, then the last 8.
    assert later and sum(rows for rows, _, steps in later if steps == 16) < len(prompts)
    assert [steps for _, _, steps in later] == sorted((steps for _, _, steps in later), reverse=True)
    assert {steps for _, _, steps in later} == {16, 8}


def test_stage_dependent_settings_decode_in_one_stage_and_say_so(world, monkeypatch, caplog) -> None:
    """min_new_tokens counts from where a generate call starts: with it set, each batch is one stage (the
    log says so once), and the text is still what one-at-a-time decoding gives."""
    model, tokenizer, sentences = world
    prompts = _staggered_prompts(sentences)
    monkeypatch.setattr(model.generation_config, "min_new_tokens", 20)
    monkeypatch.setattr(generation, "_reported_single_stage", set())
    with caplog.at_level("WARNING", logger="utils.evaluation.generation"):
        assert generation.decoding_stages(40, model) == [40]
        assert generation.decoding_stages(40, model) == [40]
    assert [r.getMessage() for r in caplog.records].count(
        "generation: the model's generation config sets min_new_tokens, so each batch is decoded in one stage "
        "(the same text, slower when a few answers run long)") == 1
    reference = generate_one_at_a_time(model, tokenizer, prompts, max_new_tokens=40)
    calls = _count_generate_calls(model, monkeypatch)
    assert generate_greedy(model, tokenizer, prompts, max_new_tokens=40, batch_size=8, progress=False) == reference
    assert [steps for _, _, steps in calls] == [40, 40]


def test_generation_config_entries_are_honoured(world, monkeypatch) -> None:
    """What the model's generation config asks for (here a repetition penalty) is what one-at-a-time gives."""
    model, tokenizer, sentences = world
    prompts = _staggered_prompts(sentences)
    plain = generate_greedy(model, tokenizer, prompts, max_new_tokens=40, batch_size=8, progress=False)
    monkeypatch.setattr(model.generation_config, "repetition_penalty", 1.5)
    penalised = generate_greedy(model, tokenizer, prompts, max_new_tokens=40, batch_size=8, progress=False)
    assert penalised == generate_one_at_a_time(model, tokenizer, prompts, max_new_tokens=40)
    assert penalised != plain  # the penalty changed something, so the comparison above means something


def test_sampling_settings_of_the_model_are_ignored(world, monkeypatch) -> None:
    """A hub generation config that samples does not make the evaluation random: decoding stays greedy."""
    model, tokenizer, sentences = world
    prompts = _prompts(sentences)
    reference = generate_greedy(model, tokenizer, prompts, max_new_tokens=20, batch_size=4, progress=False)
    monkeypatch.setattr(model.generation_config, "do_sample", True)
    monkeypatch.setattr(model.generation_config, "temperature", 5.0)
    torch.manual_seed(0)
    assert generate_greedy(model, tokenizer, prompts, max_new_tokens=20, batch_size=4, progress=False) == reference


def test_encode_all_matches_encode_prompt(world) -> None:
    _, tokenizer, sentences = world
    prompts = _prompts(sentences)
    assert generation._encode_all(tokenizer, prompts) == [encode_prompt(tokenizer, p) for p in prompts]


def test_decoding_applies_the_official_space_clean_up():
    """The official scorer's transformers release cleaned spaces before punctuation when decoding; the
    project does the same (exact match sees it) unless asked for transformers 5's raw text."""
    from utils.evaluation.generation import decode_new_tokens
    from utils.models.loading import train_tokenizer

    tokenizer = train_tokenizer(["Paris , France . It is n't here ? Yes !"] * 20, 300)
    ids = tokenizer(" Paris , France . It is n't here ?", add_special_tokens=False)["input_ids"]
    assert decode_new_tokens(tokenizer, ids + [tokenizer.eos_token_id]) == " Paris, France. It isn't here?"
    assert decode_new_tokens(tokenizer, ids, clean_up_spaces=False) == " Paris , France . It is n't here ?"
