"""95% intervals of a finished run's final score: a bootstrap over documents of its saved evaluation files.

A run folder keeps what `unlearn score` re-scores (`forget_generations.jsonl`, `retain_generations.jsonl`,
`mia_nll.json`) beside `results.json`. Each draw resamples, with replacement and by document id, the forget
and retain documents of every split x task, and the MIA members and non-members (one loss per document), then
recomputes the 12 terms, the task aggregate, the MIA score and the final score. The items are scored once
(`metrics.compute_terms`, the official rules); a draw only reweights them. The utility's per-question results
are not saved, so it is held fixed in every draw (its own noise is not in the interval).

Several runs of one method (seeds): each draw picks one run uniformly and resamples its documents, so the
interval holds the seed spread and the document noise together. The point estimate stays the official number
(the median over seeds). A paired comparison applies the same document resample to two methods' runs.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.data.lume import SPLITS, TASKS, parse_item_id
from utils.errors import UserError
from utils.evaluation.metrics import KINDS, compute_terms
from utils.evaluation.scoring import MIA_FILE, MMLU_FILE, read_generations, read_mia_nll, read_mmlu_average
from utils.io import read_json

DEFAULT_DRAWS = 1000
LEVEL = 0.95
GROUPS = [(split, task) for split in SPLITS for task in TASKS]


@dataclass
class Group:
    """One split x task: its document ids (sorted) and, per document and kind, the sum and count of item scores."""

    documents: list[str]
    sums: np.ndarray  # (documents, kinds)
    counts: np.ndarray  # (documents, kinds)


@dataclass
class SavedEvaluation:
    """What a draw needs of one run: the per-document item scores, the MIA losses and the utility."""

    groups: dict[tuple[str, str], Group]
    member: np.ndarray
    nonmember: np.ndarray
    utility: float


@dataclass
class Weights:
    """One resample per draw: how often each document (and MIA member / non-member) is drawn."""

    groups: dict[tuple[str, str], np.ndarray]  # (draws, documents)
    member: np.ndarray  # (draws, members)
    nonmember: np.ndarray  # (draws, non-members)


def read_evaluation(directory: str | Path, utility: float | None = None) -> SavedEvaluation | None:
    """The saved evaluation of a run folder, or None when it lacks the per-item files or a utility (an old run, or
    one evaluated without MIA or utility: no final score to resample). `utility` defaults to results.json's,
    else mmlu_metrics.json's."""
    directory = Path(directory)
    files = [directory / f"{split}_generations.jsonl" for split in SPLITS] + [directory / MIA_FILE]
    if not all(path.is_file() for path in files):
        return None
    if utility is None:
        utility = _saved_utility(directory)
    if utility is None:
        return None
    records = [row for split in SPLITS for row in read_generations(directory / f"{split}_generations.jsonl", split)]
    scores = compute_terms(records).item_scores
    groups = {}
    for split, task in GROUPS:
        documents = sorted({parse_item_id(s.id)[2] for s in scores if s.split == split and s.task == task})
        position = {document: index for index, document in enumerate(documents)}
        sums = np.zeros((len(documents), len(KINDS)))
        counts = np.zeros((len(documents), len(KINDS)))
        for s in scores:
            if s.split == split and s.task == task:
                row, column = position[parse_item_id(s.id)[2]], KINDS.index(s.kind)
                sums[row, column] += s.score
                counts[row, column] += 1
        groups[(split, task)] = Group(documents, sums, counts)
    mia = read_mia_nll(directory / MIA_FILE)
    return SavedEvaluation(groups, np.array(mia["member"]), np.array(mia["nonmember"]), float(utility))


def _saved_utility(directory: Path) -> float | None:
    results_path = directory / "results.json"
    if results_path.is_file():
        utility = read_json(results_path, "results file").get("utility") or {}
        if utility.get("score") is not None:
            return float(utility["score"])
    return read_mmlu_average(directory / MMLU_FILE) if (directory / MMLU_FILE).is_file() else None


def draw_weights(evaluation: SavedEvaluation, draws: int, rng: np.random.Generator) -> Weights:
    """`draws` resamples with replacement of `evaluation`'s documents and MIA documents (counts per draw)."""
    if draws < 1:
        raise UserError(f"the bootstrap needs at least one draw, got {draws}")

    def resample(size: int) -> np.ndarray:
        return rng.multinomial(size, np.full(size, 1.0 / size), size=draws).astype(float)

    return Weights({key: resample(len(group.documents)) for key, group in evaluation.groups.items()},
                   resample(len(evaluation.member)), resample(len(evaluation.nonmember)))


def unit_weights(evaluation: SavedEvaluation) -> Weights:
    """The one 'draw' that takes every document once: it gives back the official numbers."""
    return Weights({key: np.ones((1, len(group.documents))) for key, group in evaluation.groups.items()},
                   np.ones((1, len(evaluation.member))), np.ones((1, len(evaluation.nonmember))))


def _same_documents(runs: Sequence[SavedEvaluation]) -> bool:
    first = runs[0]
    return all(run.groups[key].documents == first.groups[key].documents for run in runs for key in GROUPS) and \
        all(len(run.member) == len(first.member) and len(run.nonmember) == len(first.nonmember) for run in runs)


def scores_per_draw(evaluation: SavedEvaluation, weights: Weights) -> dict[str, np.ndarray]:
    """Per draw: the 12 aggregated terms (official order), the task aggregate, MIA AUC and score, final score."""
    terms = []
    for key in GROUPS:
        group, counts = evaluation.groups[key], weights.groups[key]
        for column in range(len(KINDS)):
            total = counts @ group.counts[:, column]
            # A draw without any item of a kind in this cell (possible only when a document lacks that kind)
            # keeps the cell's mean over all its items.
            whole = group.sums[:, column].sum() / group.counts[:, column].sum()
            mean = np.divide(counts @ group.sums[:, column], total, out=np.full(total.shape, whole),
                             where=total > 0)
            terms.append(1.0 - mean if key[0] == "forget" else mean)
    terms_array = np.stack(terms, axis=1)
    # The harmonic mean of the 12 terms, 0 when any term is 0 (as statistics.harmonic_mean).
    zero = (terms_array <= 0).any(axis=1)
    safe = np.where(zero[:, None], 1.0, terms_array)
    aggregate = np.where(zero, 0.0, len(terms) / (1.0 / safe).sum(axis=1))
    # ROC AUC of the loss attack as a Mann-Whitney statistic (ties count half), which is what the trapezoidal
    # ROC area equals; weighted by how often each member and non-member is drawn.
    member, nonmember = evaluation.member[:, None], evaluation.nonmember[None, :]
    beats = (member < nonmember).astype(float) + 0.5 * (member == nonmember)
    auc = ((weights.member @ beats) * weights.nonmember).sum(axis=1) / (
        weights.member.sum(axis=1) * weights.nonmember.sum(axis=1))
    mia = 1.0 - 2.0 * np.abs(auc - 0.5)
    final = (aggregate + evaluation.utility + mia) / 3.0
    return {"terms": terms_array, "task_aggregate": aggregate, "mia_auc": auc, "mia_score": mia,
            "final_score": final}


@dataclass
class Interval:
    """A score's point estimate (the official number; the median over seeds) and its 95% bootstrap interval."""

    point: float
    low: float
    high: float
    draws: np.ndarray


def bootstrap(runs: Sequence[SavedEvaluation], draws: int = DEFAULT_DRAWS, seed: int = 0,
              score: str = "final_score") -> Interval:
    """The interval of `score` over the runs of one method (one per seed): each draw picks a run, then resamples
    its documents."""
    if not runs:
        raise UserError("the bootstrap needs at least one run with saved evaluation files")
    rng = np.random.default_rng(seed)
    per_run = [scores_per_draw(run, draw_weights(run, draws, rng))[score] for run in runs]
    chosen = rng.integers(len(runs), size=draws)
    values = np.stack(per_run)[chosen, np.arange(draws)]
    return _interval(runs, values, score)


def _interval(runs: Sequence[SavedEvaluation], values: np.ndarray, score: str) -> Interval:
    point = statistics.median(float(scores_per_draw(run, unit_weights(run))[score][0]) for run in runs)
    tail = (1.0 - LEVEL) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return Interval(point, float(low), float(high), values)


def paired(a_runs: Sequence[SavedEvaluation], b_runs: Sequence[SavedEvaluation], draws: int = DEFAULT_DRAWS,
           seed: int = 0) -> dict[str, float] | None:
    """The share of draws in which A's final score is above B's (and equal), the same documents resampled for
    both; each draw picks one run (seed) of each. None when the runs did not evaluate the same documents."""
    if not a_runs or not b_runs or not _same_documents([*a_runs, *b_runs]):
        return None
    rng = np.random.default_rng(seed)
    weights = draw_weights(a_runs[0], draws, rng)
    a = np.stack([scores_per_draw(run, weights)["final_score"] for run in a_runs])
    b = np.stack([scores_per_draw(run, weights)["final_score"] for run in b_runs])
    rows = np.arange(draws)
    a = a[rng.integers(len(a_runs), size=draws), rows]
    b = b[rng.integers(len(b_runs), size=draws), rows]
    equal = np.isclose(a, b, rtol=0.0, atol=1e-12)
    return {"above": float(np.mean((a > b) & ~equal)), "equal": float(np.mean(equal))}


def restrict(evaluation: SavedEvaluation, documents: set[str]) -> SavedEvaluation:
    """The evaluation of only `documents` (forget and retain document ids); the MIA losses and utility as they are."""
    groups = {}
    for key, group in evaluation.groups.items():
        keep = [i for i, document in enumerate(group.documents) if document in documents]
        if not keep:
            raise UserError(f"none of the chosen documents is in the {key[0]} set's {key[1]}: its terms would be "
                            "undefined")
        groups[key] = Group([group.documents[i] for i in keep], group.sums[keep], group.counts[keep])
    return SavedEvaluation(groups, evaluation.member, evaluation.nonmember, evaluation.utility)


def headline(evaluation: SavedEvaluation) -> dict:
    """The official numbers of an evaluation (every document once): the results.json keys a table reads."""
    scores = scores_per_draw(evaluation, unit_weights(evaluation))
    overall = {}
    for split in SPLITS:
        sums = sum(evaluation.groups[(split, task)].sums.sum(axis=0) for task in TASKS)
        counts = sum(evaluation.groups[(split, task)].counts.sum(axis=0) for task in TASKS)
        overall[split] = {kind: float(sums[i] / counts[i]) for i, kind in enumerate(KINDS)}
    return {"final_score": float(scores["final_score"][0]), "task_aggregate": float(scores["task_aggregate"][0]),
            "mia_auc": float(scores["mia_auc"][0]), "mia_score": float(scores["mia_score"][0]), "overall": overall}
