"""Hand-computed cases for the metric core and the input validation of `unlearn score`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from utils.cli.main import main
from utils.data.lume import SPLITS, TASKS
from utils.errors import UserError
from utils.evaluation.metrics import (
    aggregated_term_names,
    aggregated_terms,
    build_results,
    compute_terms,
    final_score,
    knowledge_score,
    mia_auc,
    mia_score,
    official_results_view,
    regurgitation_score,
    task_aggregate,
    utility_warning,
)
from utils.evaluation.scoring import score_directory


def uniform_terms(forget: float, retain: float) -> dict:
    return {split: {task: {"regurgitation": value, "knowledge": value} for task in TASKS}
            for split, value in (("forget", forget), ("retain", retain))}


# ---- single-item metrics -------------------------------------------------------------------------

def test_knowledge_score_ignores_case_and_outer_whitespace_only() -> None:
    assert knowledge_score("Madera", "  MADERA \n") == 1.0
    assert knowledge_score(" 1987", "1987") == 1.0
    assert knowledge_score("Madera", "Madera.") == 0.0
    assert knowledge_score("Madera", "Madera is the city") == 0.0  # extra text scores 0
    assert knowledge_score("New York", "New  York") == 0.0  # inner whitespace counts


def test_regurgitation_is_rouge_l_recall() -> None:
    # LCS "the cat on the mat" = 5 of the 6 gold tokens.
    assert regurgitation_score("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # Recall: extra generated text costs nothing.
    assert regurgitation_score("the cat sat", "well the cat sat on a very long mat") == 1.0
    # Stemming and case folding: cats -> cat, running -> run.
    assert regurgitation_score("Cats running!", "cat run") == 1.0
    # Order matters (subsequence, not bag of words).
    assert regurgitation_score("a b c d", "d c b a") == pytest.approx(1 / 4)
    assert regurgitation_score("x y", "") == 0.0


# ---- aggregation ---------------------------------------------------------------------------------

def test_aggregated_terms_order_and_inversion() -> None:
    terms = uniform_terms(0.0, 0.0)
    for i, (split, task, kind) in enumerate(name.split("/") for name in aggregated_term_names()):
        terms[split][task][kind] = (i + 1) / 100
    values = aggregated_terms(terms)
    expected = [1 - (i + 1) / 100 for i in range(6)] + [(i + 1) / 100 for i in range(6, 12)]
    assert values == pytest.approx(expected)
    assert aggregated_term_names()[:3] == ["forget/Task1/regurgitation", "forget/Task1/knowledge",
                                           "forget/Task2/regurgitation"]
    assert aggregated_term_names()[6] == "retain/Task1/regurgitation"


def test_task_aggregate_harmonic_mean() -> None:
    assert task_aggregate(uniform_terms(0.5, 0.5)) == pytest.approx(0.5)
    # Six terms of 1 - 0.2 = 0.8 and six of 0.4: 12 / (6/0.8 + 6/0.4) = 0.5333...
    assert task_aggregate(uniform_terms(0.2, 0.4)) == pytest.approx(12 / (6 / 0.8 + 6 / 0.4))


def test_task_aggregate_is_zero_when_one_term_is_zero() -> None:
    terms = uniform_terms(0.1, 0.9)
    terms["retain"]["Task3"]["knowledge"] = 0.0
    assert task_aggregate(terms) == 0.0
    terms = uniform_terms(0.1, 0.9)
    terms["forget"]["Task2"]["regurgitation"] = 1.0  # fully memorised: term 1 - 1 = 0
    assert task_aggregate(terms) == 0.0


def test_mia_auc_and_score() -> None:
    assert mia_auc([0.1, 0.2], [2.0, 3.0]) == 1.0  # members have lower loss: fully separable
    assert mia_auc([2.0, 3.0], [0.1, 0.2]) == 0.0
    assert mia_auc([1.0, 3.0], [2.0, 4.0]) == pytest.approx(0.75)  # 3 of 4 pairs ordered
    assert mia_score(0.5) == 1.0
    assert mia_score(1.0) == 0.0 and mia_score(0.0) == 0.0
    for auc in (0.1, 0.3, 0.42):
        assert mia_score(auc) == pytest.approx(mia_score(1 - auc))
    assert mia_score(0.75) == pytest.approx(0.5)
    with pytest.raises(UserError):
        mia_auc([], [1.0])


def test_roc_auc_is_the_loss_attack_auc_of_negated_losses() -> None:
    from utils.evaluation.metrics import roc_auc

    members, nonmembers = [1.3, 0.2, 2.9, 0.7], [1.1, 3.5, 0.9, 2.0, 2.0]
    assert roc_auc([-x for x in members], [-x for x in nonmembers]) == mia_auc(members, nonmembers)
    assert roc_auc([1.0, 1.0], [1.0]) == 0.5  # ties: the diagonal
    with pytest.raises(ValueError, match="non-finite"):
        roc_auc([float("nan")], [1.0])


def test_final_score_and_utility_warning() -> None:
    assert final_score(0.3, 0.6, 0.9) == pytest.approx(0.6)
    assert utility_warning(0.36, "mmlu") is not None
    assert utility_warning(0.371, "mmlu") is None
    assert utility_warning(0.5, "mmlu", threshold=0.6) is not None
    assert utility_warning(0.1, "synthetic") is None


def records_for(outputs: dict[str, str] | None = None) -> list[dict]:
    """One sc and one qa item per split and task; gold sc text "alpha beta", gold answer "yes"."""
    outputs = outputs or {}
    records = []
    for split in SPLITS:
        for n, task in enumerate(TASKS):
            for kind, gold in (("sc1", "alpha beta"), ("qa0", "yes")):
                item_id = f"{split}doc{n}{kind}"
                records.append({"id": item_id, "task": task, "split": split, "expected_output": gold,
                                "model_output": outputs.get(item_id, gold)})
    return records


def test_compute_terms_and_build_results() -> None:
    scores = compute_terms(records_for({"forgetdoc0sc1": "alpha", "forgetdoc0qa0": "no"}))
    assert scores.terms["forget"]["Task1"] == {"regurgitation": 0.5, "knowledge": 0.0}
    assert scores.terms["forget"]["Task2"] == {"regurgitation": 1.0, "knowledge": 1.0}
    assert scores.overall["forget"] == {"regurgitation": pytest.approx(2.5 / 3), "knowledge": pytest.approx(2 / 3)}
    assert scores.counts["retain"]["Task3"] == {"regurgitation": 1, "knowledge": 1}
    assert len(scores.item_scores) == 12

    results = build_results(scores, mia_auc=0.5, utility_benchmark="mmlu", utility_score=0.3)
    assert results["task_aggregate"] == 0.0  # forget Task2 fully memorised
    assert results["mia_score"] == 1.0
    assert results["final_score"] == pytest.approx((0.0 + 0.3 + 1.0) / 3)
    assert any("below the threshold" in w for w in results["warnings"])
    assert any("forget/Task2/regurgitation" in w for w in results["warnings"])
    view = official_results_view(results)
    assert view["forget-set"]["Task1"]["regurgitation-score"] == 0.5
    assert view["mmlu_average"] == 0.3
    json.dumps(results)  # serialisable as is


def test_final_score_is_null_without_mia_or_utility() -> None:
    scores = compute_terms(records_for())
    results = build_results(scores, utility_benchmark="mmlu", utility_score=0.5)
    assert results["final_score"] is None and results["mia_score"] is None
    assert any("MIA" in w and "final_score is null" in w for w in results["warnings"])
    results = build_results(scores, mia_auc=0.6)
    assert results["final_score"] is None and results["utility"] is None


def test_missing_kind_is_a_user_error() -> None:
    records = [r for r in records_for() if r["id"] != "retaindoc1qa0"]
    with pytest.raises(UserError, match="retain.*question.*Task2"):
        compute_terms(records)


# ---- `unlearn score` input validation ------------------------------------------------------------

def write_score_dir(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        rows = [{k: v for k, v in r.items() if k != "split"} for r in records_for() if r["split"] == split]
        (directory / f"{split}_generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (directory / "mia_nll.json").write_text(json.dumps({"member": [1.0, 3.0], "nonmember": [2.0, 4.0]}))
    (directory / "mmlu_metrics.json").write_text(json.dumps({"average_acc": 0.5}))
    return directory


def test_score_command_writes_results(tmp_path: Path) -> None:
    directory = write_score_dir(tmp_path / "run")
    out = tmp_path / "elsewhere" / "r.json"
    assert main(["score", str(directory), "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    for key in ("final_score", "task_aggregate", "mia_auc", "mia_score", "utility", "terms", "overall",
                "aggregated_terms", "mia_attacks", "counts", "timings", "evaluated", "warnings"):
        assert key in results
    assert results["task_aggregate"] == 0.0  # every forget item memorised
    assert results["mia_auc"] == pytest.approx(0.75)
    assert results["final_score"] == pytest.approx((0.0 + 0.5 + 0.5) / 3)
    assert results["utility"] == {"benchmark": "mmlu", "score": 0.5}
    assert not (directory / "results.json").exists()


def test_score_without_optional_files(tmp_path: Path) -> None:
    directory = write_score_dir(tmp_path / "run")
    (directory / "mia_nll.json").unlink()
    (directory / "mmlu_metrics.json").unlink()
    results = score_directory(directory)
    assert results["final_score"] is None and results["utility"] is None and results["mia_auc"] is None
    assert math.isfinite(results["task_aggregate"])


def _replace_line(path: Path, number: int, text: str) -> None:
    lines = path.read_text().splitlines(keepends=True)
    lines[number - 1] = text
    path.write_text("".join(lines))


def _edit_row(path: Path, number: int, **changes) -> None:
    row = json.loads(path.read_text().splitlines()[number - 1])
    for key, value in changes.items():
        if value is None:
            row.pop(key)
        else:
            row[key] = value
    _replace_line(path, number, json.dumps(row) + "\n")


BAD_INPUTS = {
    "missing file": (lambda d: (d / "retain_generations.jsonl").unlink(), "not found"),
    "malformed line": (lambda d: _replace_line(d / "forget_generations.jsonl", 2, "{not json\n"),
                       "line 2 is not valid JSON"),
    "missing field": (lambda d: _edit_row(d / "forget_generations.jsonl", 3, model_output=None),
                      "line 3 lacks field(s) model_output"),
    "unknown task": (lambda d: _edit_row(d / "retain_generations.jsonl", 1, task="Task4"), "unknown task"),
    "malformed id": (lambda d: _edit_row(d / "retain_generations.jsonl", 4, id="retaindoc1xx0"),
                     "line 4"),
    "non-string output": (lambda d: _edit_row(d / "forget_generations.jsonl", 1, model_output=3),
                          "not a string"),
    "empty file": (lambda d: (d / "forget_generations.jsonl").write_text(""), "empty"),
    "mia lacks nonmember": (lambda d: (d / "mia_nll.json").write_text('{"member": [1.0]}'), "nonmember"),
    "mia not json": (lambda d: (d / "mia_nll.json").write_text("[1, 2"), "not valid JSON"),
    "mia bad value": (lambda d: (d / "mia_nll.json").write_text('{"member": [1, "x"], "nonmember": [2]}'),
                      "not a finite number"),
    "mmlu lacks average": (lambda d: (d / "mmlu_metrics.json").write_text('{"acc": 0.4}'), "average_acc"),
    "duplicate id": (lambda d: _edit_row(d / "forget_generations.jsonl", 3, id="forgetdoc0sc1"), "repeats id"),
    "missing kind": (lambda d: _replace_line(d / "forget_generations.jsonl", 6, "\n"), "no question"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_and_keeps_results(case: str, tmp_path: Path, capsys) -> None:
    directory = write_score_dir(tmp_path / "run")
    previous = b'{"final_score": 0.42, "evaluated": {"source": "generations"}}\n'  # an earlier re-score
    (directory / "results.json").write_bytes(previous)
    corrupt, message = BAD_INPUTS[case]
    corrupt(directory)
    assert main(["score", str(directory)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert (directory / "results.json").read_bytes() == previous
    assert sorted(p.name for p in directory.iterdir() if p.name.startswith(".")) == []
