"""The benchmark scripts' own logic: the quality leaderboard end to end on the small world, the
scaling script's data fractions and linearity verdict."""

from __future__ import annotations

import csv
import json
import statistics

import pytest

from benchmarks import quality, scaling
from utils.data.lume import load_lume


def test_linear_fit_recognises_linear_and_superlinear_growth():
    linear = scaling.linear_fit([10, 20, 40], [1.0 + 0.5 * x for x in (10, 20, 40)])
    assert linear["linear"] and linear["r2"] == pytest.approx(1.0)
    assert linear["slope"] == pytest.approx(0.5) and linear["intercept"] == pytest.approx(1.0)
    quadratic = scaling.linear_fit([10, 20, 40], [x * x / 10 for x in (10, 20, 40)])
    assert not quadratic["linear"]
    assert quadratic["doubling_ratios"] == pytest.approx([4.0, 4.0])


def test_fraction_keeps_whole_documents_of_every_task(real_data_dir, tmp_path):
    lume = load_lume(real_data_dir)
    half = scaling.fraction_of(lume, 0.5)
    for split in ("forget", "retain"):
        items, part = lume.split_items(split), half.split_items(split)
        for task in ("Task1", "Task2", "Task3"):
            documents = [d for d in dict.fromkeys(i.document_id for i in items if i.task == task)]
            kept = [d for d in dict.fromkeys(i.document_id for i in part if i.task == task)]
            assert kept == documents[:round(len(documents) / 2)]  # the first half, in file order
            # every item of a kept document is kept (the sc item and all its questions)
            assert sum(i.task == task for i in part) == sum(i.document_id in kept for i in items)
    written = load_lume(scaling.write_lume(half, tmp_path / "half"))
    assert [i.id for i in written.forget] == [i.id for i in half.forget]
    assert [(i.input, i.output) for i in written.retain] == [(i.input, i.output) for i in half.retain]


def test_best_lr_takes_the_best_median_and_counts_failures_as_zero():
    def record(lr, seed, final=None):
        if final is None:
            return {"method": "gd", "lr": lr, "seed": seed, "failed": True}
        return {"method": "gd", "lr": lr, "seed": seed, "results": {"final_score": final}}

    records = [record(1e-4, 0, 0.5), record(1e-4, 1, 0.6), record(1e-3, 0, 0.9), record(1e-3, 1),
               record(1e-3, 2)]
    assert quality.best_lr(records) == {"gd": 1e-4}  # 1e-3: median of (0.9, 0, 0) = 0


def test_quality_end_to_end_on_the_small_world(small_world, tmp_path):
    """Two methods, one lr, two seeds (the second at the best lr), two runs at once: the table holds the
    gold standard, both methods (medians of their runs' own results.json) and the target."""
    out = tmp_path / "quality"
    evaluation = ["evaluation.max_new_tokens=24", "evaluation.per_phase_subset=0", "training.epochs=1"]
    argv = ["--data", "mini", "--workdir", str(small_world.root), "--methods", "gd,sugd", "--lrs", "1e-2",
            "--seeds", "0,1", "--jobs", "2", "--threads", "1", "--out", str(out)]
    argv += [x for item in small_world.overrides for x in ("--world-set", item)]
    argv += [x for item in evaluation for x in ("--set", item)]
    assert quality.main(argv) == 0

    with (out / "quality.csv").open() as handle:
        rows = {row["method"]: row for row in csv.DictReader(handle)}
    assert list(rows) == ["gold_standard", "gd", "sugd", "target"]
    gold = json.loads((out / "work" / "gold_standard" / "results.json").read_text())
    for method in ("gd", "sugd"):
        finals = [json.loads((out / "work" / "runs" / f"{method}_lr0.01_seed{seed}" / "results.json").read_text())["final_score"]
                  for seed in (0, 1)]
        assert float(rows[method]["final_score"]) == pytest.approx(statistics.median(finals))
        assert float(rows[method]["final_score_min"]) == pytest.approx(min(finals))
        assert rows[method]["seeds"] == "2"
        assert float(rows[method]["gold_mia_auc"]) == pytest.approx(gold["mia_auc"])
    # Unlearning moved the model: the target's forget regurgitation is above the methods'.
    assert float(rows["target"]["forget_regurgitation"]) > float(rows["gd"]["forget_regurgitation"])
    assert (out / "quality.png").stat().st_size > 0 and "| gd | 0.01 | 2 |" in (out / "quality.md").read_text()
    assert "| utility | robustness |" in (out / "quality.md").read_text()

    for method in ("gd", "sugd"):  # the 95% interval of documents and seeds, in the last two columns
        assert list(rows[method])[-2:] == ["final_score_low", "final_score_high"]
        assert float(rows[method]["final_score_low"]) - 1e-9 <= float(rows[method]["final_score"]) \
            <= float(rows[method]["final_score_high"]) + 1e-9
    assert rows["gold_standard"]["final_score_low"] == ""  # a reference model, not a compared method
    notes = (out / "quality.md").read_text()
    assert "above sugd in" in notes or "above gd in" in notes

    # A second call resumes: every run is reused, nothing recomputed.
    stamps = {p: p.stat().st_mtime_ns for p in (out / "work" / "runs").glob("*/results.json")}
    assert quality.main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "work" / "runs").glob("*/results.json")} == stamps

    # The held-out protocol on the same runs: the table is the reporting half's, scored from the saved files.
    assert quality.main([*argv, "--protocol", "heldout"]) == 0
    saved = json.loads((out / "quality.json").read_text())
    halves = saved["documents"]
    assert saved["protocol"] == "heldout" and not set(halves["tuning"]) & set(halves["reporting"])
    with (out / "quality.csv").open() as handle:
        heldout = {row["method"]: row for row in csv.DictReader(handle)}
    from utils.evaluation.intervals import headline, read_evaluation, restrict

    for method in ("gd", "sugd"):
        finals = [headline(restrict(read_evaluation(out / "work" / "runs" / f"{method}_lr0.01_seed{seed}"),
                                    set(halves["reporting"])))["final_score"] for seed in (0, 1)]
        assert float(heldout[method]["final_score"]) == pytest.approx(statistics.median(finals))


def test_heldout_split_is_disjoint_covering_stratified_and_deterministic():
    strata = {f"{split}/Task{t}": [f"{split[0]}{t}doc{i:03d}" for i in range(n)]
              for split in ("forget", "retain") for t, n in ((1, 10), (2, 7), (3, 1))}
    tuning, reporting = quality.heldout_split(strata)
    everything = {d for ids in strata.values() for d in ids}
    assert not tuning & reporting and tuning | reporting == everything
    for ids in strata.values():  # each stratum halved, the odd one out to tuning
        assert sum(d in tuning for d in ids) == (len(ids) + 1) // 2
    assert quality.heldout_split({k: list(reversed(v)) for k, v in strata.items()}) == (tuning, reporting)
    other = quality.heldout_split(strata, seed=quality.HELDOUT_SEED + 1)
    assert other != (tuning, reporting) and not other[0] & other[1]
    # Not the first half in file order: the documents are shuffled within each stratum.
    assert tuning & set(strata["forget/Task1"]) != set(strata["forget/Task1"][:5])


def test_quality_checkpoint_mode_takes_models_from_the_configs_and_measures_the_ceiling(small_world, tmp_path):
    """The GPU plan's path (`--configs DIR --gold MODEL`): no world is prepared; the configs name the target
    and the data, and a config with `forget_loss_ceiling: gold_standard` gets the gold standard's forget NLL."""
    import yaml

    from utils.config import load_config, to_dict

    configs = tmp_path / "configs"
    configs.mkdir()
    for method in ("gd", "sugd_ceiling"):
        # The resolved config: a copied file would lose what its `base:` names relative to its own folder.
        config = to_dict(load_config(quality.REPO / "configs" / f"{method}.yaml"))
        config.update(workdir=str(small_world.root), model={"name_or_path": str(small_world.target)},
                      data={"path": str(small_world.data)})
        (configs / f"{method}.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "quality"
    argv = ["--configs", str(configs), "--gold", str(small_world.gold_standard), "--methods", "gd,sugd_ceiling",
            "--lrs", "1e-2", "--seeds", "0", "--jobs", "2", "--threads", "1", "--out", str(out)]
    for item in ("evaluation.max_new_tokens=24", "evaluation.per_phase_subset=0", "training.epochs=1"):
        argv += ["--set", item]
    assert quality.main(argv) == 0

    with (out / "quality.csv").open() as handle:
        rows = {row["method"]: row for row in csv.DictReader(handle)}
    assert list(rows) == ["gold_standard", "gd", "sugd_ceiling", "target"]
    target = json.loads((out / "work" / "target" / "results.json").read_text())
    assert target["evaluated"]["model"] == str(small_world.target)
    ran = yaml.safe_load((out / "work" / "runs" / "sugd_ceiling_lr0.01_seed0" / "config.yaml").read_text())
    expected = small_world.report["gold_standard"]["forget"]["output_nll"]
    assert ran["method"]["forget_loss_ceiling"] == pytest.approx(expected, rel=1e-5)
    gd = yaml.safe_load((out / "work" / "runs" / "gd_lr0.01_seed0" / "config.yaml").read_text())
    assert gd["method"]["forget_loss_ceiling"] is None


def test_selection_variants_run_the_plain_config_with_selection_on_and_pair_up_in_one_table():
    """`--selection both`: "gd+select" runs gd.yaml with the best checkpoint kept; the with-and-without table
    pairs each method with its variant, each with its own chosen lr."""
    assert quality.base_method("gd+select") == "gd" and quality.base_method("sugd_select") == "sugd_select"
    setting = quality.Setting(quality.REPO / "configs", [], "target", quality.REPO / "gold")
    assert setting.config("gd+select") == quality.REPO / "configs" / "gd.yaml"
    assert quality.selection_overrides(7) == ["training.select.keep=best", "training.select.every=7"]
    rows = [{"method": "gold_standard", "final_score": 0.86, "lr": None},
            {"method": "gd", "final_score": 0.566, "final_score_low": 0.38, "final_score_high": 0.62, "lr": 1e-3},
            {"method": "gd+select", "final_score": 0.523, "final_score_low": 0.33, "final_score_high": 0.57,
             "lr": 3e-4},
            {"method": "npo", "final_score": 0.4, "lr": 3e-4}]
    table = quality.selection_table(rows, {}).splitlines()
    assert len(table) == 3  # header, rule, gd only (npo has no variant)
    assert table[2] == "| gd | 0.566 [0.38, 0.62] | 0.001 | 0.523 [0.33, 0.57] | 0.0003 | n/a |"
    assert quality.selection_table(rows[:2], {}) == ""


def test_seed_spread_is_the_median_over_groups_of_each_scores_range(tmp_path):
    """gd at one lr over 3 seeds (final 0.5, 0.6, 0.7: spread 0.2), npo over 2 (0.3, 0.35: 0.05), sugd alone (not
    counted): the final-score band is the upper quartile of {0.2, 0.05}; the 12 terms pool into one band."""
    from benchmarks.seed_spread import seed_spreads

    finals = {"gd_lr0.001_seed0": 0.5, "gd_lr0.001_seed1": 0.6, "gd_lr0.001_seed2": 0.7,
              "npo_lr0.0003_seed0": 0.3, "npo_lr0.0003_seed1": 0.35, "sugd_lr0.001_seed0": 0.9}
    for name, final in finals.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(
            {"final_score": final, "task_aggregate": 0.4, "aggregated_terms": [final] * 12,
             "utility": {"score": 1.0}}))
    (tmp_path / "not_a_run").mkdir()
    bands, groups = seed_spreads(tmp_path)
    assert groups == 2
    assert bands["final_score"] == pytest.approx(0.05 + 0.75 * (0.2 - 0.05))  # inclusive quartile of two
    assert bands["term"] == pytest.approx(statistics.quantiles([0.2] * 12 + [0.05] * 12, n=4, method="inclusive")[2])
    assert bands["task_aggregate"] == 0.0 and "mia_auc" not in bands
