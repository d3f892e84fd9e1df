"""The document bootstrap of a run's final score, on hand-made saved evaluation files."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from utils.data.lume import SPLITS, TASKS
from utils.evaluation.intervals import bootstrap, paired, read_evaluation
from utils.evaluation.scoring import score_directory

GOLD_TEXT = "alpha beta gamma delta epsilon zeta eta theta"


def write_run(directory: Path, documents: int, recall: float | None = None, seed: int = 0,
              utility: float = 0.8, mia_shift: float = 0.3) -> Path:
    """A run folder: per split x task `documents` documents of one sentence completion and one question each.

    `recall` fixes how much of the gold text every completion reproduces (all documents alike), else each
    document's share is random; a question is answered right on half the documents."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    words = GOLD_TEXT.split()
    for split in SPLITS:
        rows = []
        for task in TASKS:
            for index in range(documents):
                document = f"{split}{task}doc{index:04d}"
                share = recall if recall is not None else rng.choice([0.25, 0.5, 0.75, 1.0])
                completion = " ".join(words[:max(1, round(share * len(words)))])
                right = index % 2 == 0 if recall is None else True
                rows.append({"id": f"{document}sc1", "task": task, "expected_output": GOLD_TEXT,
                             "model_output": completion})
                rows.append({"id": f"{document}qa1", "task": task, "expected_output": "Paris",
                             "model_output": "paris" if right else "Lyon"})
        (directory / f"{split}_generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    members = [2.0 + rng.random() for _ in range(documents * 3)]
    nonmembers = [2.0 + mia_shift + rng.random() for _ in range(documents * 3)]
    (directory / "mia_nll.json").write_text(json.dumps({"member": members, "nonmember": nonmembers}))
    (directory / "mmlu_metrics.json").write_text(json.dumps({"average_acc": utility}))
    return directory


def test_point_is_the_official_score_and_the_interval_holds_it(tmp_path):
    run = write_run(tmp_path / "run", documents=12)
    official = score_directory(run)["final_score"]
    interval = bootstrap([read_evaluation(run)], draws=400, seed=1)
    assert interval.point == pytest.approx(official, abs=1e-9)
    assert interval.low < official < interval.high
    assert interval.high - interval.low > 0.01  # documents that differ give a real spread


def test_documents_that_score_alike_give_a_zero_width_task_interval(tmp_path):
    run = write_run(tmp_path / "run", documents=10, recall=0.5)
    interval = bootstrap([read_evaluation(run)], draws=300, seed=0, score="task_aggregate")
    assert interval.high - interval.low < 1e-12
    assert interval.point == pytest.approx(score_directory(run)["task_aggregate"], abs=1e-9)


def test_more_documents_narrow_the_interval(tmp_path):
    small = bootstrap([read_evaluation(write_run(tmp_path / "small", documents=6))], draws=600, seed=2)
    large = bootstrap([read_evaluation(write_run(tmp_path / "large", documents=96))], draws=600, seed=2)
    # 16 times the documents: about a quarter of the width; asked only to halve it.
    assert large.high - large.low < 0.5 * (small.high - small.low)


def test_the_bootstrap_is_deterministic_under_a_seed(tmp_path):
    evaluation = read_evaluation(write_run(tmp_path / "run", documents=8))
    first, again = bootstrap([evaluation], draws=200, seed=5), bootstrap([evaluation], draws=200, seed=5)
    other = bootstrap([evaluation], draws=200, seed=6)
    assert np.array_equal(first.draws, again.draws)
    assert not np.array_equal(first.draws, other.draws)


def test_several_seeds_take_the_median_and_widen_with_their_spread(tmp_path):
    runs = [read_evaluation(write_run(tmp_path / f"seed{s}", documents=12, utility=u, seed=s))
            for s, u in enumerate([0.5, 0.7, 0.9])]
    one = [bootstrap([run], draws=300, seed=0) for run in runs]
    together = bootstrap(runs, draws=900, seed=0)
    assert together.point == pytest.approx(sorted(i.point for i in one)[1], abs=1e-12)
    assert together.high - together.low > max(i.high - i.low for i in one)


def test_paired_comparison(tmp_path):
    a = read_evaluation(write_run(tmp_path / "a", documents=12))
    itself = paired([a], [a], draws=300)
    assert itself == {"above": 0.0, "equal": 1.0}
    better = read_evaluation(write_run(tmp_path / "b", documents=12, utility=1.0))
    assert paired([better], [a], draws=300)["above"] > 0.99
    assert paired([a], [better], draws=300)["above"] < 0.01


def test_a_run_without_per_item_files_has_no_interval(tmp_path):
    run = write_run(tmp_path / "run", documents=4)
    (run / "mia_nll.json").unlink()
    assert read_evaluation(run) is None


def finished_run(directory: Path, name: str, seed: int, utility: float, documents: int = 10,
                 per_item_files: bool = True) -> Path:
    """A run folder as `unlearn run` leaves it: the per-item files and a results.json naming the run and seed."""
    write_run(directory, documents, seed=seed, utility=utility)
    results = score_directory(directory)
    results |= {"name": name, "method": name, "evaluated": {"config": {"training": {"seed": seed}}}}
    (directory / "results.json").write_text(json.dumps(results))
    if not per_item_files:
        for path in directory.glob("*_generations.jsonl"):
            path.unlink()
    return directory


def test_leaderboard_groups_seeds_and_adds_the_interval_columns_last(tmp_path):
    from utils.evaluation.leaderboard import COLUMNS, rows_from_run_dirs, to_csv, to_markdown

    folders = [finished_run(tmp_path / "good0", "good", 0, 0.9), finished_run(tmp_path / "good1", "good", 1, 0.7),
               finished_run(tmp_path / "weak", "weak", 0, 0.2),
               finished_run(tmp_path / "old", "old", 0, 0.5, per_item_files=False)]
    rows = rows_from_run_dirs(folders, draws=300)
    assert [row["method"] for row in rows] == ["good", "weak", "old"]
    finals = [json.loads((f / "results.json").read_text())["final_score"] for f in folders]
    assert rows[0]["final_score"] == pytest.approx((finals[0] + finals[1]) / 2, abs=1e-12)  # median of two
    assert rows[0]["seeds"] == 2
    header, *lines = [line.split(",") for line in to_csv(rows).splitlines()]
    assert header[:-2] == COLUMNS[:-2] and header[-2:] == ["final_score_low", "final_score_high"]
    cells = [dict(zip(header, line)) for line in lines]
    for cell in cells[:2]:
        assert float(cell["final_score_low"]) < float(cell["final_score"]) < float(cell["final_score_high"])
    assert cells[2]["final_score_low"] == cells[2]["final_score_high"] == "" and cells[2]["final_score"] != ""
    # Utility 0.2 against 0.7-0.9: a third of that gap is rarely made up by the documents drawn.
    assert rows[1]["above_best"]["best"] == "good" and rows[1]["above_best"]["above"] < 0.1
    assert "above_best" not in rows[0] and "above_best" not in rows[2]
    markdown = to_markdown(rows)
    assert f"| good | {rows[0]['final_score']:.3f} [{rows[0]['final_score_low']:.2f}, " in markdown
    assert f"- weak: above good in {100 * rows[1]['above_best']['above']:.0f}% of draws" in markdown


def test_the_same_seed_twice_keeps_separate_rows(tmp_path):
    from utils.evaluation.leaderboard import rows_from_run_dirs

    folders = [finished_run(tmp_path / "a", "m", 0, 0.9), finished_run(tmp_path / "b", "m", 0, 0.7)]
    assert [row["method"] for row in rows_from_run_dirs(folders, draws=50)] == ["a", "b"]


def test_the_gold_standard_is_compared_but_never_the_best(tmp_path):
    from utils.evaluation.leaderboard import comparison_lines, rows_from_run_dirs

    folders = [finished_run(tmp_path / "gold", "gold_standard", 0, 1.0), finished_run(tmp_path / "m", "m", 0, 0.8),
               finished_run(tmp_path / "n", "n", 0, 0.1)]
    rows = rows_from_run_dirs(folders, draws=200)
    assert rows[0]["above_best"]["best"] == "m" and rows[0]["above_best"]["above"] > 0.99
    assert "above_best" not in rows[1] and rows[2]["above_best"]["best"] == "m"
    assert comparison_lines(rows)[0] == "gold_standard: above m in 100% of draws"


def test_a_sweep_over_seeds_gets_one_row_per_setting_with_median_range_and_interval(tmp_path):
    """Two learning rates x two seeds: one row per rate, its median and range over the two seeds, its interval
    holding the median, and the weaker rate above the better one in few paired draws."""
    from utils.experiment.sweep import GROUPED_FILE, write_grouped_summary

    utilities = {("run_000", 0): 0.9, ("run_001", 1): 0.7, ("run_002", 0): 0.2, ("run_003", 1): 0.25}
    records = []
    for (name, seed), utility in utilities.items():
        lr = 1e-3 if name in ("run_000", "run_001") else 1e-4
        folder = finished_run(tmp_path / name, "gd", seed, utility)
        records.append({"run": name, "training.learning_rate": lr, "training.seed": seed,
                        "results": json.loads((folder / "results.json").read_text())})
    records.append({"run": "run_004", "training.learning_rate": 1e-5, "training.seed": 0, "failed": True,
                    "error": "boom"})
    rows = write_grouped_summary(records, tmp_path, ["training.learning_rate", "training.seed"])
    assert [row["training.learning_rate"] for row in rows] == [1e-3, 1e-4]  # the failed setting has no row
    finals = {name: record["results"]["final_score"] for name, record in zip(utilities, records)}
    strong, weak = rows
    assert strong["seeds"] == "0,1"
    assert strong["final_score"] == pytest.approx((finals["run_000", 0] + finals["run_001", 1]) / 2, abs=1e-12)
    assert strong["final_score_min"] == pytest.approx(min(finals["run_000", 0], finals["run_001", 1]))
    assert strong["final_score_max"] == pytest.approx(max(finals["run_000", 0], finals["run_001", 1]))
    for row in rows:
        assert row["final_score_low"] <= row["final_score"] <= row["final_score_high"]
    assert strong["above_best_share"] is None and weak["above_best_share"] < 0.1
    header = (tmp_path / GROUPED_FILE).read_text().splitlines()[0].split(",")
    assert header[:2] == ["training.learning_rate", "seeds"] and header[-1] == "above_best_share"
    assert (tmp_path / GROUPED_FILE).with_suffix(".png").is_file()
