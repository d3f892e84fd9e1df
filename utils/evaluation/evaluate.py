"""Evaluation as one library call: the CLI, the unlearning runs, the notebooks and the tests use it.

`evaluate_model` generates (batched greedy) for every benchmark item, scores regurgitation and
knowledge with the official metrics, runs the MIA attacks and the utility benchmark, and returns the
`results.json` dict plus the per-item generations. `write_evaluation` saves them in the layout
`unlearn score` reads, so any run can be re-scored by the official-compatible path.
"""

from __future__ import annotations

import time
import warnings as python_warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from utils.config import DEFAULT_MMLU_THRESHOLD, EvaluationConfig
from utils.data.lume import TASKS, Item, LumeData
from utils.environment import describe_environment
from utils.evaluation.generation import generate
from utils.evaluation.memorisation import memorisation_block
from utils.evaluation.metrics import build_results, compute_terms, knowledge_score, regurgitation_score
from utils.evaluation.mia import run_mia
from utils.evaluation.mmlu import evaluate_utility
from utils.evaluation.sharding import ALONE, Shards
from utils.io import atomic_write_json, write_jsonl
from utils.models.loading import context_length


@dataclass
class Evaluation:
    results: dict
    generations: dict[str, list[dict]]  # split -> rows in the `unlearn score` format
    mia_nll: dict[str, list[float]] | None


def subset_items(items: list[Item], documents_per_task: int | None) -> list[Item]:
    """The items of the first N documents of each task (file order), for quick in-training checks."""
    if documents_per_task is None:
        return items
    kept: dict[str, list[str]] = {task: [] for task in TASKS}
    out = []
    for item in items:
        documents = kept[item.task]
        if item.document_id not in documents:
            if len(documents) >= documents_per_task:
                continue
            documents.append(item.document_id)
        out.append(item)
    return out


def generation_cap(model, max_new_tokens: int) -> int | None:
    """The new tokens a generation may take at most: the model's context, when `max_new_tokens` asks for more (past
    its positions a model reads what it never trained on, and a huge setting would generate for hours). None when
    no cap applies."""
    context = context_length(model)
    return context if context is not None and max_new_tokens > context else None


def generate_outputs(model, tokenizer, items: Sequence[Item], *, max_new_tokens: int, batch_size: int,
                     parity: str = "batched", clean_up_spaces: bool = True, progress: bool = False,
                     shards: Shards = ALONE, warn: Callable[[str], None] = python_warnings.warn) -> list[str]:
    """The evaluation's greedy generations for `items` (each process its `shards` share, every process gets all
    of them); `max_new_tokens` as given (the caller caps it with `generation_cap`)."""
    return shards.map(
        lambda prompts, note: generate(model, tokenizer, prompts, parity=parity, max_new_tokens=max_new_tokens,
                                       batch_size=batch_size, progress=progress, warn=note,
                                       clean_up_spaces=clean_up_spaces),
        [item.input for item in items], warn)


def item_scores(items: Sequence[Item], outputs: Sequence[str]) -> dict[str, float]:
    """{item id: official score of its generation} (ROUGE-L recall for sc, exact match for qa)."""
    return {item.id: (regurgitation_score if item.kind == "sc" else knowledge_score)(item.output, output)
            for item, output in zip(items, outputs)}


@torch.inference_mode()
def score_items(model, tokenizer, items: Sequence[Item], settings: EvaluationConfig, *,
                max_new_tokens: int | None = None, parity: str | None = None, progress: bool = False,
                shards: Shards = ALONE, warn: Callable[[str], None] = python_warnings.warn) -> dict[str, float]:
    """The evaluation on a subset: `items` generated with the evaluation's settings (`max_new_tokens` and `parity`
    when given instead of theirs, the model's context as the cap) and scored per item, in eval mode."""
    model.eval()
    asked = settings.max_new_tokens if max_new_tokens is None else max_new_tokens
    outputs = generate_outputs(model, tokenizer, items, max_new_tokens=generation_cap(model, asked) or asked,
                               batch_size=settings.batch_size, parity=parity or settings.parity,
                               clean_up_spaces=settings.clean_up_tokenization_spaces,
                               progress=progress and shards.is_main, shards=shards, warn=warn)
    return item_scores(items, outputs)


def kind_means(items: Sequence[Item], scores: dict[str, float]) -> dict[str, float]:
    """Mean regurgitation (sc items) and knowledge (qa items) of per-item scores (0 for a kind with no item)."""
    regurgitation = [scores[i.id] for i in items if i.kind == "sc"]
    knowledge = [scores[i.id] for i in items if i.kind == "qa"]
    return {"regurgitation": sum(regurgitation) / max(1, len(regurgitation)),
            "knowledge": sum(knowledge) / max(1, len(knowledge))}


def split_means(model, tokenizer, items: list[Item], max_new_tokens: int, batch_size: int,
                clean_up_spaces: bool = True, progress: bool = False, shards: Shards = ALONE) -> dict[str, float]:
    """Mean regurgitation and knowledge of batched greedy generations for `items`: the quick check of the
    prepared world (no MIA, no utility, no files). Under several processes each generates its `shards` share
    and every process returns the same means."""
    settings = EvaluationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size,
                                clean_up_tokenization_spaces=clean_up_spaces, parity="batched")
    return kind_means(items, score_items(model, tokenizer, items, settings, progress=progress, shards=shards))


def subset_check(model, tokenizer, lume: LumeData, settings: EvaluationConfig, shards: Shards = ALONE) -> dict:
    """The per-phase check of a run: the evaluation on the first `per_phase_subset` documents of each task, with
    `per_phase_max_new_tokens` and batched generation, as forget/retain regurgitation and knowledge means ({}
    when the subset is off). Every process must call it (each generates its share)."""
    subset = settings.per_phase_subset
    if not subset:
        return {}
    model.eval()
    out = {}
    for split in ("forget", "retain"):
        items = subset_items(lume.split_items(split), subset)
        scores = score_items(model, tokenizer, items, settings, max_new_tokens=settings.per_phase_max_new_tokens,
                             parity="batched", shards=shards)
        means = kind_means(items, scores)
        out[f"{split}_regurgitation"], out[f"{split}_knowledge"] = means["regurgitation"], means["knowledge"]
    model.train()
    return out


@torch.inference_mode()
def evaluate_model(model, tokenizer, lume: LumeData, *, mia_documents: dict[str, list[str]] | None = None,
                   utility_spec: str | None = None, max_new_tokens: int = 256, batch_size: int = 64,
                   nll_batch_size: int = 16, mmlu_shots: int = 0, mmlu_threshold: float = DEFAULT_MMLU_THRESHOLD,
                   subset: int | None = None, evaluated: dict | None = None, progress: bool = True,
                   warnings: list[str] | None = None, clean_up_spaces: bool = True,
                   shards: Shards = ALONE, parity: str = "batched") -> Evaluation:
    """Generate, score, attack and measure utility; `warnings` (e.g. why the MIA is missing) join the
    results' own, as do the counts of prompts and MIA documents cut to the model's context. Under several
    processes each scores its `shards` share and every process returns the whole evaluation. `parity`
    "strict" generates and takes the MIA losses one item at a time, as the official scorer did."""
    model.eval()
    notes = list(warnings or [])
    timings: dict[str, float] = {}
    items = subset_items(lume.forget, subset) + subset_items(lume.retain, subset)
    asked, cap = max_new_tokens, generation_cap(model, max_new_tokens)
    if cap is not None:
        max_new_tokens = cap
        notes.append(f"evaluation.max_new_tokens={asked} is more than the model's context ({cap} positions): "
                     f"generations were capped at {cap} new tokens")
    started = time.perf_counter()
    progress = progress and shards.is_main
    # One call for both splits: longer, better-filled batches.
    outputs = generate_outputs(model, tokenizer, items, max_new_tokens=max_new_tokens, batch_size=batch_size,
                               parity=parity, clean_up_spaces=clean_up_spaces, progress=progress, shards=shards,
                               warn=notes.append)
    timings["generation"] = time.perf_counter() - started
    records = [{"id": i.id, "task": i.task, "split": i.split, "expected_output": i.output, "model_output": o}
               for i, o in zip(items, outputs)]
    scores = compute_terms(records)

    # Beside the official terms, never in the final score (utils.evaluation.memorisation).
    started = time.perf_counter()
    memorisation = memorisation_block(model, tokenizer, items, nll_batch_size, shards, notes.append)
    timings["memorisation"] = time.perf_counter() - started

    mia = None
    if mia_documents is not None:
        started = time.perf_counter()
        mia = run_mia(model, tokenizer, mia_documents["member"], mia_documents["nonmember"],
                      batch_size=nll_batch_size, progress=progress, warn=notes.append, shards=shards,
                      parity=parity)
        timings["mia"] = time.perf_counter() - started

    utility = None
    if utility_spec and utility_spec != "none":
        started = time.perf_counter()
        utility = evaluate_utility(model, tokenizer, utility_spec, shots=mmlu_shots, batch_size=nll_batch_size,
                                   progress=progress, shards=shards)
        timings["utility"] = time.perf_counter() - started

    results = build_results(
        scores,
        mia_auc=None if mia is None else mia["auc"],
        mia_attacks=None if mia is None else mia["attacks"],
        utility_benchmark=None if utility is None else utility["benchmark"],
        utility_score=None if utility is None else utility["score"],
        mmlu_threshold=mmlu_threshold,
        timings=timings,
        evaluated={**(evaluated or {}), "subset_documents_per_task": subset, "max_new_tokens": asked,
                   "generation_cap": cap,
                   "clean_up_tokenization_spaces": clean_up_spaces, "parity": parity},
        warnings=notes,
    )
    if utility is not None and utility.get("details") is not None:
        results["utility"]["details"] = utility["details"]
    results["memorisation"] = memorisation
    results["environment"] = describe_environment(model)
    generations = {
        split: [{k: r[k] for k in ("id", "task", "expected_output", "model_output")}
                for r in records if r["split"] == split]
        for split in ("forget", "retain")
    }
    mia_nll = None if mia is None else {"member": mia["member_nll"], "nonmember": mia["nonmember_nll"]}
    return Evaluation(results=results, generations=generations, mia_nll=mia_nll)


def write_evaluation(evaluation: Evaluation, out_dir: str | Path) -> Path:
    """Write results.json and the re-scorable generations; each file atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / "forget_generations.jsonl", evaluation.generations["forget"])
    write_jsonl(out_dir / "retain_generations.jsonl", evaluation.generations["retain"])
    # A file this evaluation does not produce is removed: `unlearn score` would otherwise re-score these
    # generations with the MIA or MMLU of whatever model was evaluated into the folder before.
    if evaluation.mia_nll is not None:
        atomic_write_json(out_dir / "mia_nll.json", evaluation.mia_nll)
    else:
        (out_dir / "mia_nll.json").unlink(missing_ok=True)
    utility = evaluation.results.get("utility")
    if utility and str(utility.get("benchmark", "")).startswith("mmlu"):
        atomic_write_json(out_dir / "mmlu_metrics.json", {"average_acc": utility["score"]})
    else:
        (out_dir / "mmlu_metrics.json").unlink(missing_ok=True)
    atomic_write_json(out_dir / "results.json", evaluation.results)
    return out_dir / "results.json"
