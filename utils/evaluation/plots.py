"""Plots people look at to judge runs (PNG, matplotlib): loss curves and forgetting chunk by chunk for one
run, and the final score with its three components for several (a leaderboard, a sweep).

Every figure is built by a function that returns it (`score_bars_figure`, `run_figures`, `loss_figure`,
`phases_figure`), so tests can read what was drawn; `score_bars` and `plot_run` save and close them.

What the charts promise: every bar carries its value, a zero is drawn as a zero (a mark on the baseline
and "0.00") and a missing score as "n/a", never as an empty slot; a gold standard appears on every bar as
the level to compare with; a value that was not measured is a gap in its line, never bridged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import pairwise
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import yaml
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from utils.errors import UserError
from utils.io import read_json, read_jsonl, read_utf8_text

# The bars of `score_bars`: (results key, legend label), the official final score first.
SCORE_COMPONENTS = (("final_score", "final score"), ("task_aggregate", "task aggregate"),
                    ("mia_score", "MIA score"), ("utility", "utility"))
# The fifth bar, drawn when some row was attacked (the leaderboard's robustness column): hatched, because
# unlike the four scores lower is better.
ROBUSTNESS_COMPONENT = ("robustness", "robustness: share of forgetting undone\nby attacks (hatched; lower is better)")
# What a MIA score of 1 means (the score is 1 - 2|AUC - 0.5|): said in the legend of every score chart.
MIA_DIRECTION = "MIA score (higher is better;\n1 = AUC 0.5: members look like non-members)"
# The row `score_bars` takes as the reference when none is passed.
GOLD_STANDARD = "gold_standard"
# The model before any unlearning, for the per-chunk plots: a file of the run folder (the check keys and
# forget_nll / retain_nll of phases.jsonl), or a phases.jsonl line with "phase": -1 or "name": "before".
BEFORE_FILE = "before.json"
# The quick check after each phase: (key, legend label, colour, line style, marker).
CHECK_CURVES = (("forget_regurgitation", "forget regurgitation", "tab:red", "-", "o"),
                ("forget_knowledge", "forget knowledge", "tab:red", "--", "s"),
                ("retain_regurgitation", "retain regurgitation", "tab:blue", "-", "o"),
                ("retain_knowledge", "retain knowledge", "tab:blue", "--", "s"))
NLL_CURVES = (("forget_nll", "forget NLL", "tab:red"), ("retain_nll", "retain NLL", "tab:blue"))
# Above this ratio of the largest NLL to the smallest, the NLL panel uses a log scale (an ascent drives the
# forget NLL up by tens while the retain NLL stays below 1).
LOG_SCALE_RATIO = 30.0
# Light backgrounds of the phase kinds on the loss curve, in order of appearance.
KIND_COLOURS = ("#fbe3e1", "#e1ecf7", "#e6f4e2", "#fdf5d2", "#ece8f4")
# Phase names on the loss curve and phase kinds under the per-chunk ticks, up to this many phases.
MAX_NAMED_PHASES = 16


def _rows_if_any(path: Path) -> list[dict]:
    """The objects of a JSONL log, or none when the run has not written it."""
    return [row for _, row in read_jsonl(path)] if path.is_file() else []


def _number(value) -> float:
    """A plotted value: NaN for a missing one (matplotlib breaks a line there instead of bridging it)."""
    return float("nan") if value is None else float(value)


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------
# Scores of several runs


def _reference_row(rows: Sequence[Mapping], reference: Mapping | None) -> Mapping | None:
    if reference is not None:
        return reference
    return next((row for row in rows if row.get("method") == GOLD_STANDARD), None)


def _utility_label(rows: Sequence[Mapping]) -> str:
    names = sorted({str(row["utility_benchmark"]) for row in rows if row.get("utility_benchmark")})
    return f"utility ({' / '.join(names)})" if names else "utility (benchmark not recorded)"


def score_bars_figure(rows: Sequence[Mapping], labels: Sequence[str], title: str,
                      reference: Mapping | None = None) -> Figure:
    """The figure of `score_bars`: one group of four bars per row (five when some row has `robustness`), each
    bar labelled with its value.

    Bar containers and value labels come in `SCORE_COMPONENTS` order (then ROBUSTNESS_COMPONENT); a reference
    level is a line with gid `reference:<key>` and a zero mark one with gid `zero:<key>`.
    """
    if len(labels) != len(rows):
        raise ValueError(f"{len(labels)} labels for {len(rows)} rows")
    lines = max((label.count("\n") + 1 for label in labels), default=1)
    components = list(SCORE_COMPONENTS)
    if any(row.get("robustness") is not None for row in rows):
        components.append(ROBUSTNESS_COMPONENT)
    width = 0.8 / len(components)
    fig_width = max(8.0, 1.7 * len(rows) + 2)
    fig, ax = plt.subplots(figsize=(fig_width, 4.8 + 0.15 * (lines - 1)))
    gold = _reference_row(rows, reference)
    gold_name = str(gold.get("method") or "reference") if gold is not None else ""
    # The reference's own bars are its levels: they get no dashes.
    dashed = [gold is not None and row is not gold
              and not (gold.get("method") and row.get("method") == gold.get("method")) for row in rows]
    names = dict(components, mia_score=MIA_DIRECTION, utility=_utility_label(rows))
    reference_labelled = False
    for offset, (key, _) in enumerate(components):
        colour = f"C{offset}"
        xs = [i + (offset - (len(components) - 1) / 2) * width for i in range(len(rows))]
        values = [row.get(key) for row in rows]
        heights = [0.0 if v is None else float(v) for v in values]
        lows = [row.get(f"{key}_min") for row in rows]
        highs = [row.get(f"{key}_max") for row in rows]
        below = [h - low if low is not None and v is not None else 0.0
                 for h, v, low in zip(heights, values, lows)]
        above = [high - h if high is not None and v is not None else 0.0
                 for h, v, high in zip(heights, values, highs)]
        ranged = any(below) or any(above)
        ax.bar(xs, heights, width, color=colour, label=names[key], yerr=[below, above] if ranged else None,
               error_kw={"elinewidth": 1, "capsize": 2}, hatch="//" if key == "robustness" else None,
               edgecolor="white" if key == "robustness" else None)
        zeros = [x for x, v in zip(xs, values) if v == 0]
        if zeros:
            # A zero-height bar is invisible: a thick mark on the baseline in the bar's colour shows it.
            ax.plot([p for x in zeros for p in (x - width / 2, x + width / 2, math.nan)],
                    [p for _ in zeros for p in (0.0, 0.0, math.nan)], color=colour, lw=4,
                    solid_capstyle="butt", clip_on=False, gid=f"zero:{key}", zorder=3)
        level = gold.get(key) if gold is not None else None
        for x, v, h, top, dash in zip(xs, values, heights, above, dashed):
            y = h + top
            if dash and level is not None and y - 0.01 <= level <= y + 0.07:
                y = level  # just above the reference dash, not through it
            ax.text(x, y + 0.015, "n/a" if v is None else f"{v:.2f}", ha="center", va="bottom", fontsize=6.5,
                    color="0.45" if v is None else "black", gid=f"value:{key}")
        dash_xs = [x for x, dash in zip(xs, dashed) if dash]
        if level is not None and dash_xs:
            # The reference's level of this score across each other bar: one line broken into a dash per bar.
            # Narrower than the bar: a neighbour's value label never sits on it.
            ax.plot([p for x in dash_xs for p in (x - 0.45 * width, x + 0.45 * width, math.nan)],
                    [p for _ in dash_xs for p in (level, level, math.nan)], color="black", ls=(0, (3, 1.5)),
                    lw=1.2, gid=f"reference:{key}", zorder=4,
                    label=None if reference_labelled else f"{gold_name}'s value of that score (dashes)")
            reference_labelled = True
    ax.axhline(0.0, color="0.25", lw=0.8)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(list(labels), fontsize=7 if lines > 1 else None)
    ax.set_ylim(-0.03, 1.16)
    ax.set_yticks([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("score, 0 to 1 (higher is better)" if len(components) == len(SCORE_COMPONENTS)
                  else "0 to 1 (higher is better; robustness: lower)")
    ax.set_title(title)
    # Below the axis labels, however many lines they take: the four scores, then the reference.
    handles, names_ = ax.get_legend_handles_labels()
    order = sorted(range(len(handles)), key=lambda i: names_[i] not in names.values())
    ax.legend([handles[i] for i in order], [names_[i] for i in order], fontsize=8,
              ncol=3 if fig_width >= 10 else 2, loc="upper center",
              bbox_to_anchor=(0.5, -0.07 - 0.05 * lines))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def score_bars(rows: Sequence[Mapping], path: str | Path, labels: Sequence[str], title: str,
               reference: Mapping | None = None) -> Path:
    """Grouped bars per row: final score, task aggregate, MIA score and utility (the official 0-to-1 scale).

    `labels` name the rows on the x axis (a label may span lines). Every bar is labelled with its value; a
    zero gets a mark on the baseline and "0.00", a missing score "n/a". A row with `<key>_min` / `<key>_max`
    (a summary over seeds) gets range bars. `reference` (a row of scores with `method`; by default the row
    whose method is `gold_standard`, if any) is drawn as its level of each score across every bar. The
    legend names the utility benchmark (the rows' `utility_benchmark`) and the direction of the MIA score.
    """
    return _save(score_bars_figure(rows, labels, title, reference), Path(path))


# --------------------------------------------------------------------------------------------
# One run


def _check_subset(run_dir: Path) -> int | None:
    """`evaluation.per_phase_subset` of the run's config.yaml (documents per task of the quick check)."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    try:
        config = yaml.safe_load(read_utf8_text(path, "run config"))
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    evaluation = config.get("evaluation") if isinstance(config, dict) else None
    subset = evaluation.get("per_phase_subset") if isinstance(evaluation, dict) else None
    return subset if isinstance(subset, int) and not isinstance(subset, bool) else None


def _is_before(record: Mapping) -> bool:
    return record.get("phase") == -1 or record.get("name") == "before"


def _phase_boundaries(steps: Sequence[Mapping]) -> list[tuple[float, Mapping]]:
    """(x between the last step of one phase and the first of the next, first step of the next)."""
    return [(0.5 * (previous["global_step"] + step["global_step"]), step)
            for previous, step in pairwise(steps) if step.get("phase") != previous.get("phase")]


def loss_figure(steps: Sequence[Mapping], run_name: str = "run") -> Figure:
    """The training loss at every optimiser step, one line segment per phase, a dotted vertical line (gid
    `phase-boundary`) between phases and, with up to `MAX_NAMED_PHASES` phases, each phase's name."""
    boundaries = _phase_boundaries(steps)
    xs: list[float] = []
    ys: list[float] = []
    for index, step in enumerate(steps):
        if index and step.get("phase") != steps[index - 1].get("phase"):
            xs.append(math.nan)
            ys.append(math.nan)
        xs.append(float(step["global_step"]))
        ys.append(_number(step.get("loss")))
    fig, ax = plt.subplots(figsize=(9, 4.4))
    ax.plot(xs, ys, lw=1, color="tab:purple", marker="." if len(steps) <= 60 else None, ms=3, label="loss")
    finite = [y for y in ys if math.isfinite(y)]
    if finite and min(finite) < 0:
        ax.axhline(0.0, color="0.3", lw=0.8)
    for x, _ in boundaries:
        ax.axvline(x, color="0.35", ls=":", lw=1, alpha=1.0 if len(boundaries) < MAX_NAMED_PHASES else 0.45,
                   gid="phase-boundary")
    if steps:
        # The phases' spans: shaded by kind when there are several kinds (AGAD: ascent, anneal), and named
        # on a top axis when there are few enough phases to read.
        edges = [float(steps[0]["global_step"]) - 0.5, *(x for x, _ in boundaries),
                 float(steps[-1]["global_step"]) + 0.5]
        firsts = [steps[0], *(step for _, step in boundaries)]
        kinds = list(dict.fromkeys(str(step["kind"]) for step in firsts if step.get("kind")))
        if len(kinds) > 1:
            for start, end, step in zip(edges, edges[1:], firsts):
                if step.get("kind"):
                    colour = KIND_COLOURS[kinds.index(str(step["kind"])) % len(KIND_COLOURS)]
                    ax.axvspan(start, end, color=colour, lw=0, zorder=0, gid="phase-kind")
            ax.legend(handles=[Patch(color=KIND_COLOURS[i % len(KIND_COLOURS)],
                                     label=f"{kind.replace('_', ' ')} phase") for i, kind in enumerate(kinds)],
                      fontsize=7, loc="lower left")
        if len(firsts) <= MAX_NAMED_PHASES:
            top = ax.secondary_xaxis("top")
            top.set_xticks([(a + b) / 2 for a, b in pairwise(edges)])
            top.set_xticklabels([str(step.get("phase_name") or step.get("phase", "")) for step in firsts],
                                rotation=30, ha="left", rotation_mode="anchor", fontsize=6.5)
            top.tick_params(length=0)
        ax.set_xlim(edges[0], edges[-1])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    phases = len(boundaries) + 1 if steps else 0
    ax.set_xlabel("optimiser step (over all phases)")
    ax.set_ylabel("training loss (ascent terms negative)")
    ax.set_title(f"{run_name}: loss per step, {phases} phase{'s' if phases != 1 else ''}"
                 + (" (dotted: phase boundaries)" if boundaries else ""), fontsize=11)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def phases_figure(phases: Sequence[Mapping], before: Mapping | None = None, subset: int | None = None,
                  run_name: str = "run") -> Figure:
    """Left: the quick forget/retain check after each phase; right: each role's mean training NLL per phase.

    x = 0 is the model before unlearning when `before` is given (the check and NLL keys of a phases.jsonl
    line), x = i + 1 the model after phase i. A value a phase did not measure (AGAD's annealing phases train
    on no forget example: forget_nll null) is a gap in its line; markers keep single points visible.
    """
    xs = [float(p.get("phase", i)) + 1 for i, p in enumerate(phases)]
    if before is not None:
        xs = [0.0, *xs]
    records = [before, *phases] if before is not None else list(phases)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12.5, 4.8))
    checked = [spec for spec in CHECK_CURVES if any(r.get(spec[0]) is not None for r in records)]
    if not checked:
        subset_text = "none recorded"
    elif subset:
        subset_text = f"first {subset} document{'s' if subset != 1 else ''} per task of forget and retain"
    else:
        subset_text = "check subset size not recorded (config.yaml)"
    for key, label, colour, style, marker in checked:
        left.plot(xs, [_number(r.get(key)) for r in records], color=colour, ls=style, marker=marker, ms=4,
                  label=label)
    if checked:
        left.set_ylim(-0.03, 1.28)
        left.set_yticks([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
        left.legend(fontsize=8, ncol=2, loc="upper center")
    else:
        left.text(0.5, 0.5, "no quick check recorded\n(evaluation.per_phase_subset 0 or null: off)",
                  ha="center", va="center", transform=left.transAxes, color="0.4")
    left.set_ylabel("mean score on the check subset")
    left.set_title(f"quick check after each phase:\n{subset_text}", fontsize=10)
    nll_values = []
    for key, label, colour in NLL_CURVES:
        ys = [_number(r.get(key)) for r in records]
        if any(math.isfinite(y) for y in ys):
            right.plot(xs, ys, color=colour, marker="o", ms=4, label=label)
            nll_values += [y for y in ys if math.isfinite(y)]
    positive = [y for y in nll_values if y > 0]
    log_scale = len(positive) == len(nll_values) > 1 and max(positive) / min(positive) > LOG_SCALE_RATIO
    if log_scale:
        right.set_yscale("log")
    if nll_values:
        right.legend(fontsize=8)
    right.set_ylabel("mean token NLL" + (" (log scale)" if log_scale else ""))
    right.set_title("training NLL by role: mean over each phase's examples\n"
                    "(no point: the phase trained on no example of that role)", fontsize=10)
    kinds = [str(p.get("kind", "")) for p in phases]
    named = len(phases) <= MAX_NAMED_PHASES and len(set(kinds)) > 1
    ticks = ([0.0] if before is not None else []) + xs[len(xs) - len(phases):]
    tick_labels = (["before\nunlearning"] if before is not None else []) + [
        f"{int(x)}\n{kind.replace('_', ' ')}" if named else f"{int(x)}"
        for x, kind in zip(xs[len(xs) - len(phases):], kinds)]
    for axis in (left, right):
        axis.set_xlim(min(xs) - 0.5, max(xs) + 0.5)
        labelled = len(ticks) <= 2 * MAX_NAMED_PHASES
        if labelled:
            axis.set_xticks(ticks)
            axis.set_xticklabels(tick_labels, fontsize=7 if named else None)
        axis.set_xlabel("after phase" + ("  (no before-unlearning point recorded)" if before is None
                                         else "" if labelled else "  (0: before unlearning)"))
        axis.grid(alpha=0.3)
    fig.suptitle(f"{run_name}: forgetting phase by phase", fontsize=11)
    fig.tight_layout()
    return fig


def read_before(run_dir: Path, phases: list[dict]) -> tuple[dict | None, list[dict]]:
    """The before-unlearning record (`BEFORE_FILE`, else a phases.jsonl line marked phase -1 / "before")
    and the phases without it."""
    marked = [p for p in phases if _is_before(p)]
    rest = [p for p in phases if not _is_before(p)]
    path = run_dir / BEFORE_FILE
    if path.is_file():
        return read_json(path, "before-unlearning record"), rest
    return (marked[0] if marked else None), rest


def run_figures(run_dir: str | Path) -> dict[str, Figure]:
    """The figures of one run folder by file name: loss.png when log.jsonl has steps, phases.png when
    phases.jsonl has phases (with the model before unlearning when the folder records it, see
    `BEFORE_FILE`, and the quick check's size from config.yaml)."""
    run_dir = Path(run_dir)
    # Everything is read before anything is drawn: a malformed file leaves no figure open.
    steps = _rows_if_any(run_dir / "log.jsonl")
    before, phases = read_before(run_dir, _rows_if_any(run_dir / "phases.jsonl"))
    subset = _check_subset(run_dir) if phases else None
    figures = {}
    name = run_dir.resolve().name
    if steps:
        figures["loss.png"] = loss_figure(steps, name)
    if phases:
        figures["phases.png"] = phases_figure(phases, before, subset, name)
    return figures


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write loss.png (every step) and phases.png (per chunk/phase scores and NLLs) when there is data."""
    run_dir = Path(run_dir)
    return [_save(fig, run_dir / name) for name, fig in run_figures(run_dir).items()]


def selection_figure(selection: Mapping, run_name: str = "run") -> Figure:
    """The selection score at every scored point (by optimiser step, the start model at step 0) with the
    sample's forget and retain NLLs, and the chosen point marked."""
    curve = selection["curve"]
    steps = [point["step"] for point in curve]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12.5, 4.4))
    left.plot(steps, [_number(point["score"]) for point in curve], color="black", marker="o", label="selection score")
    chosen = selection["chosen"]
    chosen_score = selection["score"]
    left.scatter([chosen["step"]], [_number(chosen_score)], s=160, facecolors="none", edgecolors="tab:green",
                 linewidths=2, zorder=3, label=f"chosen ({chosen_score:.3f})" if chosen_score is not None else "chosen")
    left.set_ylim(-0.02, 1.02)
    left.set_xlabel("optimiser step")
    left.set_ylabel("selection score (higher is better)")
    left.set_title(f"{run_name}: checkpoint selection")
    left.legend(loc="best", fontsize=8)
    for key, label, colour in NLL_CURVES:
        right.plot(steps, [_number(point[key]) for point in curve], color=colour, marker=".", label=label)
    if selection.get("gold_forget_nll") is not None:
        right.axhline(selection["gold_forget_nll"], color="tab:red", linestyle=":", label="gold standard forget NLL")
    right.axvline(chosen["step"], color="tab:green", linestyle="--", linewidth=1)
    right.set_xlabel("optimiser step")
    right.set_ylabel("mean answer NLL of the selection sample")
    right.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return fig


def plot_selection(selection: Mapping, path: str | Path) -> Path:
    """Write the selection curve (`selection_figure`) of a run's results.json `selection` record."""
    return _save(selection_figure(selection, Path(path).parent.resolve().name), Path(path))


# --------------------------------------------------------------------------------------------
# Score against compute


def score_time_figure(rows: Sequence[Mapping], title: str = "Final score against unlearning time") -> Figure:
    """Each row's final score (with its interval as an error bar when it has one) against its unlearning
    seconds, labelled by method: a compute-normalised comparison. Rows without both numbers are left out and
    named under the axes; a gold standard (trained, not unlearned) is a horizontal line."""
    fig, axis = plt.subplots(figsize=(8.5, 5.2))
    reference = _reference_row(rows, None)
    drawn, skipped = [], []
    for row in rows:
        if row is reference:
            continue
        seconds, score = row.get("seconds"), row.get("final_score")
        if seconds is None or score is None or not math.isfinite(float(seconds)) or float(seconds) <= 0:
            skipped.append(str(row.get("method")))
            continue
        low, high = row.get("final_score_low"), row.get("final_score_high")
        error = None if low is None or high is None else [[max(0.0, score - low)], [max(0.0, high - score)]]
        points = axis.errorbar([seconds], [score], yerr=error, fmt="o", capsize=3)
        points.lines[0].set_gid(f"point:{row.get('method')}")
        axis.annotate(str(row.get("method")), (seconds, score), textcoords="offset points", xytext=(5, 4),
                      fontsize=8)
        drawn.append(float(seconds))
    if reference is not None and reference.get("final_score") is not None:
        axis.axhline(reference["final_score"], color="black", linestyle="--", linewidth=1,
                     label=f"gold standard ({reference['final_score']:.3f})", gid="reference:final_score")
        axis.legend(loc="best", fontsize=8)
    if drawn and max(drawn) / min(drawn) > LOG_SCALE_RATIO:
        axis.set_xscale("log")
    axis.set_ylim(-0.02, 1.02)
    axis.set_xlabel("unlearning seconds")
    axis.set_ylabel("final score (higher is better; bars: 95% interval)")
    axis.set_title(title)
    if skipped:
        fig.text(0.01, 0.01, "no time or score: " + ", ".join(skipped), fontsize=7)
    fig.tight_layout()
    return fig


def plot_score_time(rows: Sequence[Mapping], path: str | Path, title: str = "Final score against unlearning time") -> Path:
    return _save(score_time_figure(rows, title), Path(path))


# --------------------------------------------------------------------------------------------
# The robustness matrix


def recovery_matrix_figure(rows: Sequence[Mapping], columns: Sequence[str],
                           title: str = "Recovery under each attack") -> Figure:
    """Methods (rows) x attacks (columns) coloured by recovery, the share of what was forgotten that the attack
    brought back (0 white to 1 dark red; lower is better), every cell labelled; an attack not measured on a
    method is a grey "n/a" cell, never a 0."""
    values = [[_number(row.get(column)) for column in columns] for row in rows]
    fig, axis = plt.subplots(figsize=(1.6 + 1.35 * len(columns), 1.2 + 0.42 * len(rows)))
    image = axis.imshow(values, cmap="Reds", vmin=0.0, vmax=1.0, aspect="auto")
    axis.set_facecolor("#d9d9d9")  # a NaN cell is transparent: the grey behind it shows
    for i, row_values in enumerate(values):
        for j, value in enumerate(row_values):
            text = "n/a" if math.isnan(value) else f"{value:.2f}"
            axis.text(j, i, text, ha="center", va="center", fontsize=8, gid=f"cell:{i}:{j}",
                      color="white" if not math.isnan(value) and value > 0.6 else "black")
    axis.set_xticks(range(len(columns)), [c.removeprefix("recovery_").replace("_", " ") for c in columns],
                    rotation=30, ha="right", fontsize=8)
    axis.set_yticks(range(len(rows)), [str(row.get("method")) for row in rows], fontsize=8)
    fig.colorbar(image, ax=axis, label="recovery (lower is better)")
    axis.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_recovery_matrix(rows: Sequence[Mapping], columns: Sequence[str], path: str | Path,
                         title: str = "Recovery under each attack") -> Path:
    return _save(recovery_matrix_figure(rows, columns, title), Path(path))
