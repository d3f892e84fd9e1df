"""The score chart shared by the leaderboard and the sweep summary, the per-run plots, and what they draw:
values on every bar, a zero as a zero, the gold standard's levels, the starting point, the check subset's
size, gaps where nothing was measured and the phase boundaries of the loss curve."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from matplotlib.container import BarContainer

from utils.errors import UserError
from utils.evaluation.leaderboard import plot_leaderboard
from utils.evaluation.plots import SCORE_COMPONENTS, plot_run, run_figures, score_bars, score_bars_figure

ROWS = [
    {"method": "ga", "final_score": 0.41, "task_aggregate": 0.2, "mia_score": 0.6, "utility": 0.43},
    {"method": "sugd", "final_score": 0.55, "task_aggregate": None, "mia_score": 0.7, "utility": 0.45,
     "final_score_min": 0.5, "final_score_max": 0.6},
]
GOLD = {"method": "gold_standard", "final_score": 0.865, "task_aggregate": 0.876, "mia_score": 0.719, "utility": 1.0,
        "utility_benchmark": "synthetic-multiple-choice"}
# Rows as quickstart writes them: GA's task aggregate and MIA score are exactly 0.
BOARD = [GOLD,
         {"method": "ga", "final_score": 1 / 3, "task_aggregate": 0.0, "mia_score": 0.0, "utility": 1.0,
          "utility_benchmark": "synthetic-multiple-choice"},
         {"method": "kl", "final_score": 0.74, "task_aggregate": 0.429, "mia_score": 0.875, "utility": 0.917,
          "utility_benchmark": "synthetic-multiple-choice"}]


@pytest.fixture(autouse=True)
def no_figure_left_open():
    yield
    plt.close("all")


def bars(ax) -> dict[str, list[float]]:
    containers = [c for c in ax.containers if isinstance(c, BarContainer)]
    return {key: [patch.get_height() for patch in container]
            for (key, _), container in zip(SCORE_COMPONENTS, containers)}


def texts(ax, gid: str) -> list[str]:
    return [t.get_text() for t in ax.texts if t.get_gid() == gid]


def line(ax, gid: str):
    found = [artist for artist in ax.lines if artist.get_gid() == gid]
    assert len(found) == 1, (gid, [a.get_gid() for a in ax.lines])
    return found[0]


def finite(values) -> list[float]:
    return [float(v) for v in values if not math.isnan(v)]


def same(a, b) -> bool:
    """Equal lists of floats, NaN equal to NaN."""
    return len(a) == len(b) and all((math.isnan(x) and math.isnan(y)) or x == pytest.approx(y) for x, y in zip(a, b))


def test_score_bars_writes_a_png_for_one_line_and_several_line_labels(tmp_path):
    written = score_bars(ROWS, tmp_path / "board.png", ["ga", "sugd"], "Leaderboard", reference=ROWS[0])
    assert written == tmp_path / "board.png" and written.read_bytes()[:4] == b"\x89PNG"
    sweep = score_bars(ROWS, tmp_path / "sweep.png", ["lr=1e-5\nsteps=10", "lr=2e-5\nsteps=10"], "Sweep")
    assert sweep.read_bytes()[:4] == b"\x89PNG"
    assert plot_leaderboard(ROWS, tmp_path / "lb.png").is_file()
    with pytest.raises(ValueError, match="1 labels for 2 rows"):
        score_bars(ROWS, tmp_path / "x.png", ["ga"], "Leaderboard")
    assert plt.get_fignums() == []  # saved and closed


def test_every_bar_has_its_value_a_zero_is_drawn_and_a_missing_score_says_so():
    ax = score_bars_figure(BOARD + ROWS[1:], ["gold", "ga", "kl", "sugd"], "Leaderboard").axes[0]
    heights = bars(ax)
    assert heights["mia_score"] == pytest.approx([0.719, 0.0, 0.875, 0.7])
    assert heights["task_aggregate"] == pytest.approx([0.876, 0.0, 0.429, 0.0])
    assert texts(ax, "value:mia_score") == ["0.72", "0.00", "0.88", "0.70"]
    assert texts(ax, "value:final_score") == ["0.86", "0.33", "0.74", "0.55"]
    # SUGD has no task aggregate: "n/a", not a zero, and no zero mark.
    assert texts(ax, "value:task_aggregate") == ["0.88", "0.00", "0.43", "n/a"]
    # GA's zero MIA score is a thick mark on the baseline across its bar (the second group, third bar).
    mark = line(ax, "zero:mia_score")
    assert finite(mark.get_ydata()) == [0.0, 0.0] and mark.get_linewidth() >= 3
    assert finite(mark.get_xdata()) == pytest.approx([1 + 0.5 * 0.2 - 0.1, 1 + 0.5 * 0.2 + 0.1])
    assert finite(line(ax, "zero:task_aggregate").get_xdata()) == pytest.approx([1 - 0.5 * 0.2 - 0.1, 1 - 0.5 * 0.2 + 0.1])
    assert not [a for a in ax.lines if a.get_gid() == "zero:final_score"]
    # The baseline sits inside the axes, so the mark is not cut in half by the frame.
    assert ax.get_ylim()[0] < 0


def test_the_gold_standard_row_is_the_reference_level_of_each_score_and_the_legend_says_what_is_shown():
    ax = score_bars_figure(BOARD, [row["method"] for row in BOARD], "Leaderboard").axes[0]
    for offset, (key, _) in enumerate(SCORE_COMPONENTS):
        reference = line(ax, f"reference:{key}")
        assert finite(reference.get_ydata()) == [GOLD[key]] * 4
        # One dash over each other row's bar (GA, KL), none over the gold standard's own bars.
        xs = finite(reference.get_xdata())
        centres = [(a + b) / 2 for a, b in zip(xs[::2], xs[1::2])]
        assert centres == pytest.approx([1 + (offset - 1.5) * 0.2, 2 + (offset - 1.5) * 0.2])
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[:2] == ["final score", "task aggregate"]
    assert "higher is better" in legend[2] and "1 = AUC 0.5" in legend[2]
    assert legend[3] == "utility (synthetic-multiple-choice)"
    assert legend[4].startswith("gold_standard")
    # KL's utility 0.917 leaves room for its label below gold's 1.0; a utility of 0.97 would be written
    # across the dash, so its label goes above it.
    kl_utility = [t for t in ax.texts if t.get_gid() == "value:utility"][2]
    assert kl_utility.get_text() == "0.92" and kl_utility.get_position()[1] == pytest.approx(0.917 + 0.015)
    close = score_bars_figure([GOLD, {**BOARD[2], "utility": 0.97}], ["gold", "kl"], "Leaderboard").axes[0]
    label = [t for t in close.texts if t.get_gid() == "value:utility"][1]
    assert label.get_text() == "0.97" and label.get_position()[1] > 1.0


def test_an_explicit_reference_wins_and_without_one_no_level_is_drawn():
    ax = score_bars_figure(ROWS, ["ga", "sugd"], "Sweep", reference={"method": "target", "final_score": 0.5}).axes[0]
    assert finite(line(ax, "reference:final_score").get_ydata()) == [0.5, 0.5, 0.5, 0.5]
    assert not [a for a in ax.lines if a.get_gid() == "reference:mia_score"]  # the reference has no MIA score
    assert [t.get_text() for t in ax.get_legend().get_texts()][-1].startswith("target")
    plain = score_bars_figure(ROWS, ["ga", "sugd"], "Sweep").axes[0]
    assert not [a for a in plain.lines if str(a.get_gid()).startswith("reference:")]
    assert "utility (benchmark not recorded)" in [t.get_text() for t in plain.get_legend().get_texts()]
    # Range bars for the summary over seeds; the label clears the top of the range.
    sugd_final = [t for t in plain.texts if t.get_gid() == "value:final_score"][1]
    assert sugd_final.get_position()[1] > 0.6


# --------------------------------------------------------------------------------------------
# One run: an AGAD-like folder (ascent, anneal, ascent) with 3 + 2 + 3 optimiser steps.

STEPS = [(0, "agad-chunk0-ascent", "ascent", [-0.1, -0.5, -1.0]), (1, "agad-chunk0-anneal0", "anneal", [0.4, 0.2]),
         (2, "agad-chunk1-ascent", "ascent", [-0.3, -1.2, -2.5])]
PHASES = [
    {"phase": 0, "name": "agad-chunk0-ascent", "kind": "ascent", "steps": 3, "loss": -0.53, "forget_nll": 0.53,
     "retain_nll": None, "forget_regurgitation": 0.3, "forget_knowledge": 0.5, "retain_regurgitation": 0.4,
     "retain_knowledge": 0.8},
    {"phase": 1, "name": "agad-chunk0-anneal0", "kind": "anneal", "steps": 2, "loss": 0.3, "forget_nll": None,
     "retain_nll": 0.3, "forget_regurgitation": 0.35, "forget_knowledge": 0.5, "retain_regurgitation": 0.6,
     "retain_knowledge": 0.9},
    {"phase": 2, "name": "agad-chunk1-ascent", "kind": "ascent", "steps": 3, "loss": -1.33, "forget_nll": 1.33,
     "retain_nll": None, "forget_regurgitation": 0.1, "forget_knowledge": 0.25, "retain_regurgitation": 0.5,
     "retain_knowledge": 0.85},
]
BEFORE = {"phase": -1, "name": "before", "forget_nll": 0.05, "retain_nll": 0.04, "forget_regurgitation": 0.9,
          "forget_knowledge": 0.75, "retain_regurgitation": 0.85, "retain_knowledge": 0.95}


def write_run(folder: Path, before: str | None = "file", subset: int | None = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    log, global_step = [], 0
    for phase, name, kind, losses in STEPS:
        for step, loss in enumerate(losses, start=1):
            global_step += 1
            log.append({"phase": phase, "phase_name": name, "step": step, "global_step": global_step, "loss": loss,
                        "lr": 1e-3, "seconds": 0.1, "kind": kind})
    (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    phases = ([BEFORE] if before == "line" else []) + PHASES
    (folder / "phases.jsonl").write_text("".join(json.dumps(p) + "\n" for p in phases))
    if before == "file":
        (folder / "before.json").write_text(json.dumps(BEFORE) + "\n")
    if subset is not None:
        (folder / "config.yaml").write_text(f"method:\n  name: agad\nevaluation:\n  subset: 8\n  per_phase_subset: {subset}\n")
    return folder


def test_the_loss_curve_marks_phase_boundaries_and_does_not_join_phases(tmp_path):
    loss = run_figures(write_run(tmp_path / "run"))["loss.png"].axes[0]
    boundaries = sorted(a.get_xdata()[0] for a in loss.lines if a.get_gid() == "phase-boundary")
    assert boundaries == [3.5, 5.5]  # between steps 3 | 4 and 5 | 6
    curve = next(a for a in loss.lines if a.get_label() == "loss")
    assert same(list(curve.get_xdata()), [1, 2, 3, math.nan, 4, 5, math.nan, 6, 7, 8])
    assert same(list(curve.get_ydata()), [-0.1, -0.5, -1.0, math.nan, 0.4, 0.2, math.nan, -0.3, -1.2, -2.5])
    # The spans are shaded by kind (two kinds here) and named on the top axis.
    assert len([p for p in loss.patches if p.get_gid() == "phase-kind"]) == 3
    assert [t.get_text() for t in loss.get_legend().get_texts()] == ["ascent phase", "anneal phase"]
    (top,) = loss.child_axes
    assert [t.get_text() for t in top.get_xticklabels()] == [name for _, name, _, _ in STEPS]
    assert "3 phases" in loss.get_title()


def test_phases_start_before_unlearning_state_the_subset_and_leave_unmeasured_nll_as_gaps(tmp_path):
    left, right = run_figures(write_run(tmp_path / "run"))["phases.png"].axes
    assert "first 3 documents per task" in left.get_title()
    curves = {a.get_label(): a for a in left.lines}
    assert list(curves["forget regurgitation"].get_xdata()) == [0, 1, 2, 3]
    assert list(curves["forget regurgitation"].get_ydata()) == [0.9, 0.3, 0.35, 0.1]
    assert list(curves["retain knowledge"].get_ydata()) == [0.95, 0.8, 0.9, 0.85]
    assert [t.get_text() for t in left.get_xticklabels()] == ["before\nunlearning", "1\nascent", "2\nanneal", "3\nascent"]
    nll = {a.get_label(): a for a in right.lines}
    # The anneal phase trained on no forget example (null): a gap, not a line from phase 1 to phase 3.
    assert same(list(nll["forget NLL"].get_ydata()), [0.05, 0.53, math.nan, 1.33])
    assert same(list(nll["retain NLL"].get_ydata()), [0.04, math.nan, 0.3, math.nan])
    assert nll["forget NLL"].get_marker() == "o"  # an isolated point still shows


def test_the_starting_point_may_be_a_phases_line_and_may_be_absent(tmp_path):
    left, _ = run_figures(write_run(tmp_path / "line", before="line"))["phases.png"].axes
    curve = {a.get_label(): a for a in left.lines}["forget regurgitation"]
    assert list(curve.get_ydata()) == [0.9, 0.3, 0.35, 0.1]
    left, _ = run_figures(write_run(tmp_path / "none", before=None, subset=None))["phases.png"].axes
    curve = {a.get_label(): a for a in left.lines}["forget regurgitation"]
    assert list(curve.get_xdata()) == [1, 2, 3] and list(curve.get_ydata()) == [0.3, 0.35, 0.1]
    assert "no before-unlearning point" in left.get_xlabel()
    assert "size not recorded" in left.get_title()  # no config.yaml


def test_a_run_without_the_quick_check_still_plots_its_nll(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "phases.jsonl").write_text(json.dumps({"phase": 0, "name": "ga", "kind": "ascent", "steps": 4,
                                                     "loss": -1.0, "forget_nll": 1.0, "retain_nll": None}) + "\n")
    (folder / "config.yaml").write_text("evaluation:\n  per_phase_subset: 0\n")
    left, right = run_figures(folder)["phases.png"].axes
    assert len(left.lines) == 0 and "per_phase_subset 0 or null: off" in left.texts[0].get_text()
    assert "none recorded" in left.get_title() and left.get_xlim() == right.get_xlim() == (0.5, 1.5)
    assert list({a.get_label(): a for a in right.lines}["forget NLL"].get_ydata()) == [1.0]


def test_plot_run_writes_both_pngs_and_closes_its_figures(tmp_path):
    folder = write_run(tmp_path / "run")
    assert plot_run(folder) == [folder / "loss.png", folder / "phases.png"]
    assert all((folder / name).read_bytes()[:4] == b"\x89PNG" for name in ("loss.png", "phases.png"))
    assert plt.get_fignums() == []


def test_plot_run_skips_absent_logs_and_names_a_malformed_line(tmp_path):
    assert plot_run(tmp_path) == []
    (tmp_path / "log.jsonl").write_text('{"global_step": 1, "loss": 2.0}\n{"global_step": 2, "lo\n')
    with pytest.raises(UserError, match=r"log.jsonl: line 2 is not valid JSON"):
        plot_run(tmp_path)
    (tmp_path / "log.jsonl").unlink()
    write_run(tmp_path / "bad")
    (tmp_path / "bad" / "config.yaml").write_text("evaluation: [\n")
    with pytest.raises(UserError, match=r"config.yaml: not valid YAML"):
        plot_run(tmp_path / "bad")
    assert plt.get_fignums() == []


def test_attacked_rows_get_a_fifth_hatched_robustness_bar_and_unattacked_ones_say_n_a():
    from utils.evaluation.plots import ROBUSTNESS_COMPONENT

    attacked = [dict(GOLD, robustness=0.005), dict(BOARD[1], robustness=0.21), dict(BOARD[2])]
    ax = score_bars_figure(attacked, [row["method"] for row in attacked], "Leaderboard").axes[0]
    containers = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert len(containers) == 5
    heights = [patch.get_height() for patch in containers[4]]
    assert heights == pytest.approx([0.005, 0.21, 0.0])
    assert all(patch.get_hatch() == "//" for patch in containers[4])
    assert not any(patch.get_hatch() for patch in containers[0])
    # Five bars share the group's width, centred on the tick; the third row was not attacked.
    assert [patch.get_x() + patch.get_width() / 2 for patch in containers[4]] == pytest.approx(
        [i + 2 * 0.16 for i in range(3)])
    assert texts(ax, "value:robustness") == ["0.01", "0.21", "n/a"]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert ROBUSTNESS_COMPONENT[1] in legend and "lower is better" in ROBUSTNESS_COMPONENT[1]
    assert "robustness: lower" in ax.get_ylabel()
    # Without any robustness the chart keeps its four bars.
    plain = score_bars_figure(BOARD, [row["method"] for row in BOARD], "Leaderboard").axes[0]
    assert len([c for c in plain.containers if isinstance(c, BarContainer)]) == 4


def test_score_against_time_draws_each_timed_method_with_its_interval():
    """One point per method with a time and a score, its interval as the error bar, the gold standard as a line;
    a method without a time is named, not drawn at zero."""
    from utils.evaluation.plots import score_time_figure

    rows = [{"method": "gold_standard", "final_score": 0.86, "seconds": 30.0},
            {"method": "gd", "final_score": 0.57, "seconds": 3.3, "final_score_low": 0.38, "final_score_high": 0.62},
            {"method": "sugd", "final_score": 0.72, "seconds": 13.4},
            {"method": "merged", "final_score": 0.5, "seconds": None}]
    fig = score_time_figure(rows)
    axis = fig.axes[0]
    points = {line.get_gid(): line for line in axis.get_lines() if line.get_gid()}
    assert set(points) == {"point:gd", "point:sugd", "reference:final_score"}
    assert list(points["point:gd"].get_xdata()) == [3.3] and list(points["point:gd"].get_ydata()) == [0.57]
    bars = next(c for c in axis.containers if c.lines[0].get_gid() == "point:gd")
    low, high = bars.lines[2][0].get_segments()[0][:, 1]
    assert (low, high) == pytest.approx((0.38, 0.62))
    assert list(points["reference:final_score"].get_ydata()) == [0.86, 0.86]
    assert any("merged" in text.get_text() for text in fig.texts)


def test_the_robustness_matrix_has_one_column_per_attack_after_the_fixed_ones():
    """Per-attack recoveries become CSV columns after every fixed one (the contract), and the heat map labels
    each cell, an attack a method was not given as n/a, never 0."""
    from utils.evaluation.leaderboard import COLUMNS, row_from_results, to_csv, to_markdown
    from utils.evaluation.plots import recovery_matrix_figure

    def results(final, blocks):
        return {"final_score": final, "robustness": {**blocks, "mean_recovery": 0.1, "target": "t"}}

    rows = [row_from_results("sugd", results(0.8, {"relearn": {"recovery": 0.05}, "quantize_4bit": {"recovery": 0.2}})),
            row_from_results("npo", results(0.4, {"relearn": {"recovery": 0.9},
                                                   "nf4": {"recovery": None, "skipped": "no GPU"}}))]
    header = to_csv(rows).splitlines()[0].split(",")
    assert header[:len(COLUMNS)] == COLUMNS
    assert header[len(COLUMNS):] == ["recovery_relearn", "recovery_quantize_4bit", "recovery_nf4"]
    assert "| recovery_relearn | recovery_quantize_4bit | recovery_nf4 |" in to_markdown(rows)
    columns = header[len(COLUMNS):]
    fig = recovery_matrix_figure(rows, columns)
    cells = {text.get_gid(): text.get_text() for text in fig.axes[0].texts}
    assert cells == {"cell:0:0": "0.05", "cell:0:1": "0.20", "cell:0:2": "n/a",
                     "cell:1:0": "0.90", "cell:1:1": "n/a", "cell:1:2": "n/a"}
