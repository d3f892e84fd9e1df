"""Batched greedy generation must reproduce the official one-at-a-time decoding exactly."""

from __future__ import annotations

import random

import pytest
import torch

from utils import generation
from utils.errors import UserError
from utils.generation import eos_token_ids, generate_greedy, generate_one_at_a_time
from utils.models import build_tiny_model, train_tokenizer
from utils.tokenization import encode_prompt

WORDS = ["the", "cat", "dog", "sat", "on", "a", "mat", "red", "blue", "green", "house", "river", "tree",
         "moon", "sun", "star", "bird", "fish", "runs", "jumps", "sleeps", "quickly", "slowly", "under",
         "over", "near", "big", "small", "old", "young"]


def _sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) + "." for _ in range(n)]


@pytest.fixture(scope="module")
def world():
    """A tiny Olmo2 trained for 30 steps on 8 sentences, each followed by EOS (so it learns to stop)."""
    torch.set_num_threads(1)
    sentences = _sentences(100)
    tokenizer = train_tokenizer(sentences, 300)
    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = [tokenizer(s)["input_ids"] + [tokenizer.eos_token_id] for s in sentences[:8]]
    width = max(map(len, batch))
    input_ids = torch.tensor([b + [tokenizer.pad_token_id] * (width - len(b)) for b in batch])
    labels = torch.tensor([b + [-100] * (width - len(b)) for b in batch])
    for _ in range(30):
        loss = model(input_ids=input_ids, attention_mask=(labels != -100).long(), labels=labels).loss
        loss.backward()
        optimiser.step()
        optimiser.zero_grad()
    model.eval()
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
    assert warned == [(f"1 of 2 prompts are longer than the model's context ({context} positions) less "
                      f"max_new_tokens (8): each kept its last {context - 8} tokens")]
    # The long prompt is answered as its last tokens alone would be; the short one as if alone.
    end = tokenizer.decode(tokenizer(long_prompt)["input_ids"][-(context - 8):])
    assert tokenizer(end)["input_ids"] == tokenizer(long_prompt)["input_ids"][-(context - 8):]
    assert outputs == [generate_greedy(model, tokenizer, [end], max_new_tokens=8, progress=False)[0],
                       generate_greedy(model, tokenizer, ["the"], max_new_tokens=8, progress=False)[0]]


def test_keep_prompt_ends_needs_room_for_the_answer() -> None:
    assert generation.keep_prompt_ends([[1, 2, 3]], None, 10, print) == [[1, 2, 3]]
    with pytest.raises(UserError, match=r"max_new_tokens \(8\) leaves no room for a prompt in the model's context of 8"):
        generation.keep_prompt_ends([[1, 2, 3]], 8, 8, print)


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


def _count_generate_calls(model, monkeypatch) -> list[tuple[int, int]]:
    """(rows, padded width) of every `model.generate` call."""
    calls = []
    original = model.generate

    def counting(*args, **kwargs):
        calls.append(tuple(kwargs["input_ids"].shape))
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "generate", counting)
    return calls


def test_batches_go_through_generate_longest_first(world, monkeypatch) -> None:
    """Every batch is one `model.generate` call on left-padded prompts, the longest prompts first."""
    model, tokenizer, sentences = world
    prompts = _staggered_prompts(sentences)
    reference = generate_one_at_a_time(model, tokenizer, prompts, max_new_tokens=40)
    calls = _count_generate_calls(model, monkeypatch)
    assert generate_greedy(model, tokenizer, prompts, max_new_tokens=40, batch_size=4, progress=False) == reference
    assert [rows for rows, _ in calls] == [4, 4, 4, 3]
    widths = [width for _, width in calls]
    assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1]


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
