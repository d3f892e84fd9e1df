"""MMLU / synthetic multiple-choice loading, prompts and scoring, checked against direct computations."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from utils.data.tokenization import encode_prompt
from utils.errors import UserError
from utils.evaluation.mmlu import (
    MultipleChoiceQuestion,
    build_mmlu_prompts,
    choice_likelihood_accuracy,
    choice_log_likelihoods,
    evaluate_utility,
    letter_token_ids,
    load_mmlu,
    load_synthetic_questions,
    mmlu_accuracy,
    mmlu_prompt,
    next_token_logits,
    predict_letters,
)

from ..conftest import WORDS as BASE_WORDS
from ..conftest import briefly_trained_model, random_sentences

WORDS = [*BASE_WORDS, "what", "is", "which", "answer"]


@pytest.fixture(scope="module")
def world():
    """A tiny Olmo2 trained briefly (so its logits are far from uniform) and its tokenizer."""
    sentences = random_sentences(100, words=WORDS) + ["Answer: A B C D", "A. B. C. D."]
    return briefly_trained_model(sentences)


def _questions(n: int = 10, seed: int = 1) -> list[MultipleChoiceQuestion]:
    rng = random.Random(seed)
    subjects = ("astronomy", "high_school_physics")
    return [MultipleChoiceQuestion(
        subject=subjects[i % 2],
        question="what is " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 15))) + "?",
        choices=tuple(" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4))) for _ in range(4)),
        answer_index=rng.randrange(4)) for i in range(n)]


# ---- loaders -----------------------------------------------------------------------------------------

def _write_csv_layout(root: Path) -> None:
    (root / "test").mkdir(parents=True)
    (root / "dev").mkdir()
    (root / "test" / "astronomy_test.csv").write_text(
        'What is the Sun?,A star,A planet,A moon,"A comet, maybe",A\n'
        "Which is largest?,Mars,Jupiter,Venus,Earth,B\n")
    (root / "test" / "high_school_physics_test.csv").write_text("Unit of force?,joule,watt,newton,pascal,C\n")
    (root / "dev" / "astronomy_dev.csv").write_text("Closest star?,Sirius,Vega,Rigel,The Sun,D\n")


def test_csv_layout(tmp_path: Path) -> None:
    _write_csv_layout(tmp_path)
    test = load_mmlu(tmp_path, "test")
    assert [q.subject for q in test] == ["astronomy", "astronomy", "high_school_physics"]
    assert test[0] == MultipleChoiceQuestion("astronomy", "What is the Sun?",
                                             ("A star", "A planet", "A moon", "A comet, maybe"), 0)
    assert test[2].answer_index == 2
    dev = load_mmlu(tmp_path, "dev")
    assert dev[0].answer_index == 3 and dev[0].subject == "astronomy"
    # The original tarball unpacks into data/: the parent folder works too.
    nested = tmp_path / "outer"
    _write_csv_layout(nested / "data")
    assert load_mmlu(nested, "test") == test


def _parquet(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


PARQUET_ROWS = [
    {"question": "What is the Sun?", "subject": "astronomy", "choices": ["A star", "A planet", "A moon", "A comet"],
     "answer": 0},
    {"question": "Unit of force?", "subject": "high_school_physics",
     "choices": ["joule", "watt", "newton", "pascal"], "answer": 2},
]


def test_parquet_all_layout(tmp_path: Path) -> None:
    _parquet(tmp_path / "all" / "test-00000-of-00001.parquet", PARQUET_ROWS)
    _parquet(tmp_path / "all" / "dev-00000-of-00001.parquet", PARQUET_ROWS[:1])
    # Per-subject folders next to all/ are ignored when all/ exists (no double counting).
    _parquet(tmp_path / "astronomy" / "test-00000-of-00001.parquet", PARQUET_ROWS[:1])
    questions = load_mmlu(tmp_path, "test")
    assert len(questions) == 2
    assert questions[1] == MultipleChoiceQuestion("high_school_physics", "Unit of force?",
                                                  ("joule", "watt", "newton", "pascal"), 2)
    assert len(load_mmlu(tmp_path, "dev")) == 1
    assert load_mmlu(tmp_path / "all", "test") == questions


def test_parquet_subject_folders(tmp_path: Path) -> None:
    _parquet(tmp_path / "astronomy" / "test-00000-of-00001.parquet", PARQUET_ROWS[:1])
    rows = [{k: v for k, v in PARQUET_ROWS[1].items() if k != "subject"}]  # subject from the folder name
    _parquet(tmp_path / "high_school_physics" / "test-00000-of-00001.parquet", rows)
    _parquet(tmp_path / "auxiliary_train" / "test-00000-of-00001.parquet", PARQUET_ROWS)
    questions = load_mmlu(tmp_path, "test")
    assert [q.subject for q in questions] == ["astronomy", "high_school_physics"]


def test_synthetic_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "mc.jsonl"
    path.write_text(json.dumps({"subject": "geography", "question": "Capital of Norland?",
                                "choices": ["Oslar", "Brem", "Tull", "Vask"], "answer": "C"}) + "\n\n")
    assert load_synthetic_questions(path) == [
        MultipleChoiceQuestion("geography", "Capital of Norland?", ("Oslar", "Brem", "Tull", "Vask"), 2)]


@pytest.mark.parametrize("name, content", [
    ("five_columns", "Q?,a,b,c,A\n"),
    ("bad_letter", "Q?,a,b,c,d,E\n"),
    ("empty", ""),
])
def test_malformed_csv(tmp_path: Path, name: str, content: str) -> None:
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / f"{name}_test.csv").write_text(content)
    with pytest.raises(UserError, match=f"{name}_test.csv"):
        load_mmlu(tmp_path, "test")


def test_malformed_parquet_and_folders(tmp_path: Path) -> None:
    _parquet(tmp_path / "a" / "all" / "test-00000-of-00001.parquet", [{"question": "Q?", "subject": "x", "answer": 1}])
    with pytest.raises(UserError, match="lacks column"):
        load_mmlu(tmp_path / "a", "test")
    bad_answer = [dict(PARQUET_ROWS[0], answer=4)]
    _parquet(tmp_path / "b" / "all" / "test-00000-of-00001.parquet", bad_answer)
    with pytest.raises(UserError, match="answer 4"):
        load_mmlu(tmp_path / "b", "test")
    three_choices = [dict(PARQUET_ROWS[0], choices=["x", "y", "z"])]
    _parquet(tmp_path / "c" / "all" / "test-00000-of-00001.parquet", three_choices)
    with pytest.raises(UserError, match="4 choices"):
        load_mmlu(tmp_path / "c", "test")
    (tmp_path / "d" / "all").mkdir(parents=True)
    (tmp_path / "d" / "all" / "test-00000-of-00001.parquet").write_text("not parquet")
    with pytest.raises(UserError, match="not a readable parquet"):
        load_mmlu(tmp_path / "d", "test")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no MMLU test data"):
        load_mmlu(tmp_path / "empty", "test")
    with pytest.raises(UserError, match="not found"):
        load_mmlu(tmp_path / "missing", "test")


@pytest.mark.parametrize("line, message", [
    ("{not json", "not valid JSON"),
    ('["a"]', "not a JSON object"),
    ('{"subject": "s", "question": "q", "choices": ["a", "b", "c", "d"]}', "lacks field"),
    ('{"subject": "s", "question": "q", "choices": ["a", "b", "c", "d"], "answer": "F"}', "answer 'F'"),
    ('{"subject": "s", "question": "q", "choices": ["a", "b"], "answer": "A"}', "4 choices"),
])
def test_malformed_synthetic(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "mc.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(UserError, match=message):
        load_synthetic_questions(path)


def test_a_synthetic_file_that_is_not_utf8_names_the_byte_offset(tmp_path: Path) -> None:
    path = tmp_path / "mc.jsonl"
    path.write_bytes(b'{"subject": "caf\xe9"}\n')
    with pytest.raises(UserError, match=r"mc.jsonl: not UTF-8 text \(byte 0xe9 at byte offset 16\)"):
        load_synthetic_questions(path)


def test_missing_or_empty_synthetic(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_synthetic_questions(tmp_path / "absent.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(UserError, match="no questions"):
        load_synthetic_questions(tmp_path / "empty.jsonl")


# ---- prompts -----------------------------------------------------------------------------------------

def test_mmlu_prompt_format() -> None:
    question = MultipleChoiceQuestion("high_school_physics", "Unit of force?", ("joule", "watt", "newton", "pascal"), 2)
    shot = MultipleChoiceQuestion("high_school_physics", "Unit of energy?", ("joule", "watt", "volt", "ohm"), 0)
    assert mmlu_prompt(question, [shot]) == (
        "The following are multiple choice questions (with answers) about  high school physics.\n\n"
        "Unit of energy?\nA. joule\nB. watt\nC. volt\nD. ohm\nAnswer: A\n\n"
        "Unit of force?\nA. joule\nB. watt\nC. newton\nD. pascal\nAnswer:")


def test_shots_are_dropped_until_the_prompt_fits(world) -> None:
    _, tokenizer = world
    questions = _questions(4)
    dev = [MultipleChoiceQuestion(q.subject, q.question * 3, q.choices, q.answer_index) for q in _questions(12, 7)]
    full, used_full = build_mmlu_prompts(tokenizer, questions, dev, shots=5, max_prompt_tokens=100_000)
    assert used_full == [5] * 4 and len(full) == 4
    zero, _ = build_mmlu_prompts(tokenizer, questions, dev, shots=0)
    for index, question in enumerate(questions):
        same_subject = [d for d in dev if d.subject == question.subject]
        lengths = [len(encode_prompt(tokenizer, mmlu_prompt(question, same_subject[:k]))) for k in range(6)]
        assert lengths == sorted(lengths) and len(set(lengths)) == 6
        limit = (lengths[2] + lengths[3]) // 2  # fits 2 shots, not 3
        ids, used = build_mmlu_prompts(tokenizer, [question], dev, shots=5, max_prompt_tokens=limit)
        assert used == [2] and len(ids[0]) == lengths[2] <= limit
        assert ids[0] == encode_prompt(tokenizer, mmlu_prompt(question, same_subject[:2]))
        # Too long even without shots: the 0-shot prompt is kept.
        ids, used = build_mmlu_prompts(tokenizer, [question], dev, shots=5, max_prompt_tokens=3)
        assert used == [0] and ids[0] == zero[index]
    with pytest.raises(UserError, match="dev questions"):
        build_mmlu_prompts(tokenizer, questions, None, shots=5)


# ---- scoring -----------------------------------------------------------------------------------------

def test_letter_scoring_matches_single_prompt_argmax(world) -> None:
    model, tokenizer = world
    questions = _questions(10)
    dev = _questions(6, 3)
    letter_ids = letter_token_ids(tokenizer)
    assert letter_ids == [tokenizer(" " + x, add_special_tokens=False)["input_ids"][-1] for x in "ABCD"]
    assert len(set(letter_ids)) == 4
    predictions, used = predict_letters(model, tokenizer, questions, dev, shots=2, batch_size=3, progress=False)
    prompts, _ = build_mmlu_prompts(tokenizer, questions, dev, shots=2)
    batched_logits = next_token_logits(model, tokenizer, prompts, letter_ids, batch_size=3, progress=False)
    expected, direct_logits = [], []
    for question in questions:
        shots = [d for d in dev if d.subject == question.subject][:2]
        ids = torch.tensor([encode_prompt(tokenizer, mmlu_prompt(question, shots))])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, -1]
        direct_logits.append(logits[letter_ids].tolist())
        expected.append(int(logits[letter_ids].argmax()))
    assert predictions == expected
    assert used == [2] * len(questions)
    # Stronger than the argmax: the left-padded batch gives each prompt's own letter logits.
    for got, want in zip(batched_logits, direct_logits):
        assert got == pytest.approx(want, abs=1e-4)
    assert len({tuple(round(x, 4) for x in row) for row in direct_logits}) == len(questions)


def test_mmlu_accuracy_summary(world) -> None:
    model, tokenizer = world
    questions = _questions(10)
    predictions, _ = predict_letters(model, tokenizer, questions, progress=False)
    result = mmlu_accuracy(model, tokenizer, questions, batch_size=4, progress=False)
    correct = [p == q.answer_index for p, q in zip(predictions, questions)]
    assert result["n"] == 10 and result["shots"] == 0
    assert result["pooled"] == pytest.approx(sum(correct) / 10)
    per_subject = {}
    for subject in ("astronomy", "high_school_physics"):
        flags = [c for c, q in zip(correct, questions) if q.subject == subject]
        per_subject[subject] = sum(flags) / len(flags)
    assert result["per_subject"] == pytest.approx(per_subject)
    assert result["subject_mean"] == pytest.approx(sum(per_subject.values()) / 2)


def test_cloze_scoring_matches_direct_computation(world) -> None:
    model, tokenizer = world
    questions = _questions(6)
    likelihoods = choice_log_likelihoods(model, tokenizer, questions, batch_size=5, progress=False)
    predictions = []
    for question, scored in zip(questions, likelihoods):
        prompt_ids = encode_prompt(tokenizer, question.question + " Answer:")
        direct = []
        for choice, (total, count) in zip(question.choices, scored):
            choice_ids = tokenizer(" " + choice, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt_ids + choice_ids])
            with torch.no_grad():
                log_probs = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
            value = sum(float(log_probs[len(prompt_ids) - 1 + j, t]) for j, t in enumerate(choice_ids))
            assert total == pytest.approx(value, abs=1e-4)
            assert count == len(choice_ids)
            direct.append(value)
        predictions.append(max(range(4), key=lambda i: direct[i]))
    result = choice_likelihood_accuracy(model, tokenizer, questions, batch_size=5, progress=False)
    expected = sum(p == q.answer_index for p, q in zip(predictions, questions)) / len(questions)
    assert result["pooled"] == pytest.approx(expected)
    assert result["scoring"] == "sum_log_prob"
    normalised = choice_likelihood_accuracy(model, tokenizer, questions, progress=False, length_normalize=True)
    assert normalised["scoring"] == "mean_log_prob"


def test_evaluate_utility(world, tmp_path: Path) -> None:
    model, tokenizer = world
    assert evaluate_utility(model, tokenizer, "none") is None
    _write_csv_layout(tmp_path / "mmlu")
    zero = evaluate_utility(model, tokenizer, f"mmlu:{tmp_path / 'mmlu'}", progress=False)
    assert zero["benchmark"] == "mmlu" and zero["details"]["average"] == "subject"
    assert zero["score"] == zero["details"]["subject_mean"]
    few = evaluate_utility(model, tokenizer, f"mmlu:{tmp_path / 'mmlu'}", shots=5, progress=False)
    assert few["benchmark"] == "mmlu-5shot" and few["details"]["average"] == "pooled"
    assert few["score"] == few["details"]["pooled"]
    chosen = evaluate_utility(model, tokenizer, f"mmlu:{tmp_path / 'mmlu'}", shots=5, average="subject",
                              progress=False)
    assert chosen["details"]["average"] == "subject" and chosen["score"] == chosen["details"]["subject_mean"]
    path = tmp_path / "mc.jsonl"
    path.write_text("".join(json.dumps({"subject": q.subject, "question": q.question, "choices": list(q.choices),
                                        "answer": "ABCD"[q.answer_index]}) + "\n" for q in _questions(4)))
    synthetic = evaluate_utility(model, tokenizer, f"synthetic:{path}", progress=False)
    assert synthetic["benchmark"] == "synthetic-multiple-choice"
    assert "mmlu" not in synthetic["benchmark"]
    assert synthetic["details"]["n"] == 4 and synthetic["details"]["average"] == "pooled"
    for bad in ("mmlu", "glue:x", "synthetic:"):
        with pytest.raises(UserError):
            evaluate_utility(model, tokenizer, bad)
    with pytest.raises(UserError, match="no MMLU dev data"):
        (tmp_path / "nodev" / "test").mkdir(parents=True)
        (tmp_path / "nodev" / "test" / "x_test.csv").write_text("Q?,a,b,c,d,A\n")
        evaluate_utility(model, tokenizer, f"mmlu:{tmp_path / 'nodev'}", shots=1, progress=False)
