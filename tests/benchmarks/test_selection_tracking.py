"""benchmarks/selection_tracking.py: the rank correlation, the regret, the held-out documents, and one small run."""

from __future__ import annotations

import csv
import json
import math

import pytest

from benchmarks import selection_tracking as tracking
from benchmarks.quality import documents_by_stratum, heldout_split
from utils.errors import UserError
from utils.evaluation.intervals import headline, read_evaluation, restrict


def test_spearman_with_ties_matches_the_hand_computed_value():
    # Worked by hand: the tied pair shares the mean of its two ranks; the products of the ranks' deviations
    # from their mean, over the root of the product of their squares.
    assert tracking.average_ranks([1, 2, 2, 3]) == [1.0, 2.5, 2.5, 4.0]
    assert tracking.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5.0), abs=1e-12)
    assert tracking.average_ranks([5, 1, 5, 5]) == [3.0, 1.0, 3.0, 3.0]
    assert tracking.spearman([1, 2, 3], [9, 4, 1]) == pytest.approx(-1.0)
    assert tracking.spearman([1, 2, 3], [7, 7, 7]) is None  # one side constant: undefined
    assert tracking.spearman([1], [2]) is None
    scipy_stats = pytest.importorskip("scipy.stats")
    x, y = [0.0, 0.8, 0.8, 0.3, 0.1, 0.8], [0.33, 0.5, 0.6, 0.55, 0.33, 0.2]
    assert tracking.spearman(x, y) == pytest.approx(scipy_stats.spearmanr(x, y).statistic, abs=1e-12)


def test_regret_takes_the_first_top_score_and_compares_with_the_best_and_the_last():
    points = [{"step": step, "score": score, "heldout_final": final}
              for step, score, final in [(0, 0.0, 0.33), (5, 0.8, 0.50), (10, 0.8, 0.60), (15, 0.3, 0.55)]]
    result = tracking.regret(points)
    # Two steps tie on the top score: the first is picked, as Selection keeps the first best.
    assert (result["picked_step"], result["best_step"]) == (5, 10)
    assert result["regret_vs_best"] == pytest.approx(0.10)
    assert result["gain_vs_last"] == pytest.approx(-0.05)
    summary = tracking.summarise({"a": points, "b": [dict(p, heldout_final=p["score"]) for p in points]})
    assert summary["checkpoints"] == 8 and summary["runs"] == 2
    # Run b's finals equal its scores: no regret, and a perfect within-run correlation.
    assert summary["per_run"][1]["regret_vs_best"] == 0 and summary["per_run"][1]["spearman"] == pytest.approx(1.0)
    assert summary["mean_regret_vs_best"] == pytest.approx(0.05)


def test_heldout_documents_are_the_reporting_half_minus_the_sampled_documents():
    strata = {"forget/Task1": ["f1", "f2", "f3", "f4"], "retain/Task1": ["r1", "r2", "r3", "r4"]}
    tuning, reporting = heldout_split(strata)
    forget_reported = sorted(d for d in reporting if d.startswith("f"))
    forget_tuned = sorted(d for d in tuning if d.startswith("f"))
    assert len(forget_reported) == 2
    # One sampled item of a reported document, two of a tuning document (item id = document id + kind + index).
    sample = [forget_reported[0] + "sc0", forget_tuned[0] + "qa1", forget_tuned[0] + "sc2"]
    kept = tracking.heldout_documents(strata, sample)
    assert kept == reporting - {forget_reported[0]}
    assert len(kept) == 3 and forget_reported[1] in kept
    # Both reported documents of a stratum sampled: nothing is left to score it.
    with pytest.raises(UserError, match="forget/Task1"):
        tracking.heldout_documents(strata, [d + "qa0" for d in forget_reported])


def test_end_to_end_on_the_small_world(small_world, tmp_path, monkeypatch):
    """One gd run, a point every optimiser step: one evaluated point per selection step, scored on held-out
    documents only, and the four reports."""
    import utils.experiment.run as run_module
    from utils.data.lume import parse_item_id
    from utils.experiment.selection import selection_sample

    # The small world's reporting half has a single document per split and task: the sample
    # is one item per role from a tuning document, which leaves every reporting document held out.
    def tuning_sample(lume, tokenizer, config):
        strata: dict[str, list[str]] = {}
        for item in [*lume.forget, *lume.retain]:
            strata.setdefault(f"{item.split}/{item.task}", []).append(parse_item_id(item.id)[2])
        tuning, _ = heldout_split(strata)
        every = selection_sample(lume, tokenizer, config, size=len(lume.forget) + len(lume.retain))
        return {role: [next(e for e in examples if parse_item_id(e.item_id)[2] in tuning)]
                for role, examples in every.items()}

    monkeypatch.setattr(run_module, "selection_sample", tuning_sample)
    out, work = tmp_path / "out", tmp_path / "work"
    argv = ["--workdir", str(small_world.root), "--methods", "gd", "--lrs", "1e-2", "--seeds", "0", "--every", "1",
            "--out", str(out), "--work", str(work), "--set", "training.epochs=1",
            "--set", "evaluation.max_new_tokens=24"]
    assert tracking.main(argv) == 0

    with (out / "selection_tracking.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    run_dir = work / "runs" / "gd_lr0.01_seed0"
    curve = json.loads((run_dir / "selection.json").read_text())["curve"]
    # Every optimiser step is a point, and the start model too.
    assert [int(row["step"]) for row in rows] == [point["step"] for point in curve] == [0, 1, 2, 3, 4, 5]
    assert [float(row["score"]) for row in rows] == pytest.approx([point["score"] for point in curve])
    saved = json.loads((out / "selection_tracking.json").read_text())
    documents = set(saved["runs"][0]["heldout_documents"])
    sampled = {item_id[:-3] for item_id in saved["runs"][0]["sample"]}
    strata = documents_by_stratum(work / "evaluations" / "gd_lr0.01_seed0" / "step000000")
    assert len(sampled) == 2 and documents == heldout_split(strata)[1] and not documents & sampled
    for row in rows:
        folder = work / "evaluations" / "gd_lr0.01_seed0" / f"step{int(row['step']):06d}"
        evaluation = read_evaluation(folder)
        assert float(row["heldout_final"]) == pytest.approx(headline(restrict(evaluation, documents))["final_score"])
        # Fewer documents than the evaluation scored: the held-out half, less the sample.
        all_documents = sum(len(group.documents) for group in evaluation.groups.values())
        assert 0 < int(row["heldout_documents"]) < all_documents
    # Unlearning moved the held-out score away from the start model's.
    assert float(rows[-1]["heldout_final"]) != pytest.approx(float(rows[0]["heldout_final"]), abs=1e-3)
    assert saved["summary"]["checkpoints"] == 6 and "torch" in saved["environment"]
    assert "Spearman, pooled" in (out / "selection_tracking.md").read_text()
    assert (out / "selection_tracking.png").stat().st_size > 0

    # The observer leaves training as it was: the same run without it scores the same curve.
    from utils.experiment.experiment import Experiment
    from utils.experiment.run import run_experiment

    settings = json.loads((work / "records" / "gd_lr0.01_seed0.json").read_text())["settings"]
    plain = Experiment.from_config(settings["config"], settings["overrides"], run_dir=tmp_path / "plain")
    run_experiment(plain, evaluate=False, progress=False, log=lambda *_: None)
    plain_curve = json.loads((tmp_path / "plain" / "selection.json").read_text())["curve"]
    assert [(p["step"], p["score"]) for p in plain_curve] == [(p["step"], p["score"]) for p in curve]

    # A second call with the same settings reuses the run.
    stamp = (work / "records" / "gd_lr0.01_seed0.json").stat().st_mtime_ns
    assert tracking.main(argv) == 0
    assert (work / "records" / "gd_lr0.01_seed0.json").stat().st_mtime_ns == stamp


def test_bad_options_end_in_one_line(capsys):
    assert tracking.main(["--methods", "no_such_method"]) == 2
    assert "no config for method 'no_such_method'" in capsys.readouterr().err
    assert tracking.main(["--every", "0"]) == 2
