"""Plots people look at to judge runs (PNG, matplotlib): loss curves and forgetting chunk by chunk for one
run, and the final score with its three components for several (a leaderboard, a sweep)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from utils.io import read_jsonl

# The bars of `score_bars`: (results key, legend label), the official final score first.
SCORE_COMPONENTS = (("final_score", "final score"), ("task_aggregate", "task aggregate"),
                    ("mia_score", "MIA score"), ("utility", "utility"))


def _rows_if_any(path: Path) -> list[dict]:
    """The objects of a JSONL log, or none when the run has not written it."""
    return [row for _, row in read_jsonl(path)] if path.is_file() else []


def score_bars(rows: Sequence[Mapping], path: str | Path, labels: Sequence[str], title: str,
               reference: Mapping | None = None) -> Path:
    """Grouped bars per row: final score, task aggregate, MIA score and utility (the official 0-to-1 scale).

    `labels` name the rows on the x axis (a label may span lines). A missing score is drawn as 0. A row
    with `<key>_min` / `<key>_max` (a summary over seeds) gets range bars; `reference` (a row with
    `final_score` and `method`, e.g. the gold standard) draws its final score as a dashed line.
    """
    if len(labels) != len(rows):
        raise ValueError(f"{len(labels)} labels for {len(rows)} rows")
    lines = max((label.count("\n") + 1 for label in labels), default=1)
    width = 0.2
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(rows) + 2), 4.2 + 0.15 * (lines - 1)))
    for offset, (key, name) in enumerate(SCORE_COMPONENTS):
        xs = [i + (offset - 1.5) * width for i in range(len(rows))]
        values = [row.get(key) or 0.0 for row in rows]
        low = [v - (row.get(f"{key}_min") if row.get(f"{key}_min") is not None else v) for v, row in zip(values, rows)]
        high = [(row.get(f"{key}_max") if row.get(f"{key}_max") is not None else v) - v for v, row in zip(values, rows)]
        ax.bar(xs, values, width, label=name, yerr=[low, high] if any(low) or any(high) else None,
               error_kw={"elinewidth": 1, "capsize": 2})
    if reference is not None and reference.get("final_score") is not None:
        ax.axhline(reference["final_score"], color="black", linestyle="--", linewidth=1,
                   label=f"{reference.get('method', 'reference')} final ({reference['final_score']:.3f})")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(list(labels), fontsize=7 if lines > 1 else None)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score (higher is better)")
    ax.set_title(title)
    # Below the axis labels, however many lines they take.
    ax.legend(fontsize=8, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.07 - 0.05 * lines))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write loss.png (every step) and phases.png (per chunk/phase scores and NLLs) when there is data."""
    run_dir = Path(run_dir)
    written = []
    steps = _rows_if_any(run_dir / "log.jsonl")
    if steps:
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot([r["global_step"] for r in steps], [r["loss"] for r in steps], lw=1)
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("training loss (ascent terms negative)")
        ax.set_title(f"{run_dir.name}: loss per step")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(run_dir / "loss.png", dpi=120)
        plt.close(fig)
        written.append(run_dir / "loss.png")
    phases = _rows_if_any(run_dir / "phases.jsonl")
    if phases:
        x = [p["phase"] + 1 for p in phases]
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
        for key, style in (("forget_regurgitation", "r-o"), ("forget_knowledge", "r--s"),
                           ("retain_regurgitation", "b-o"), ("retain_knowledge", "b--s")):
            if key in phases[0]:
                left.plot(x, [p[key] for p in phases], style, label=key.replace("_", " "), ms=3)
        left.set_ylim(-0.02, 1.02)
        left.set_xlabel("finished chunk / phase")
        left.set_ylabel("score on the check subset")
        left.set_title("forgetting chunk by chunk")
        left.legend(fontsize=8)
        left.grid(alpha=0.3)
        for key, style in (("forget_nll", "r-o"), ("retain_nll", "b-o")):
            points = [(xi, p[key]) for xi, p in zip(x, phases) if p.get(key) is not None]
            if points:
                right.plot(*zip(*points), style, label=f"{key.split('_')[0]} NLL (phase mean)", ms=3)
        right.set_xlabel("finished chunk / phase")
        right.set_ylabel("mean token NLL during the phase")
        right.set_title("training NLL by role")
        right.legend(fontsize=8)
        right.grid(alpha=0.3)
        for axis in (left, right):
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        fig.tight_layout()
        fig.savefig(run_dir / "phases.png", dpi=120)
        plt.close(fig)
        written.append(run_dir / "phases.png")
    return written
