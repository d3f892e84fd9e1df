"""The leaderboard: one row per method from its results.json, as a terminal table, CSV, markdown and a chart."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from utils.data import format_table
from utils.errors import UserError
from utils.io import atomic_write_text, read_utf8_text

# The first six columns are a contract (other tools read leaderboard.csv); new ones go at the end.
COLUMNS = ["method", "final_score", "task_aggregate", "mia_score", "utility", "seconds", "mia_auc",
           "forget_regurgitation", "retain_regurgitation", "utility_benchmark"]


def row_from_results(method: str, results: dict, seconds: float | None = None) -> dict:
    """A leaderboard row; `seconds` defaults to the run's unlearning time (else its evaluation time)."""
    timings = results.get("timings", {})
    utility = results.get("utility") or {}
    overall = results.get("overall", {})
    return {
        "method": method.lower(),
        "final_score": results.get("final_score"),
        "task_aggregate": results.get("task_aggregate"),
        "mia_score": results.get("mia_score"),
        "utility": utility.get("score"),
        "seconds": seconds if seconds is not None else timings.get("unlearning", timings.get("total")),
        "mia_auc": results.get("mia_auc"),
        "forget_regurgitation": overall.get("forget", {}).get("regurgitation"),
        "retain_regurgitation": overall.get("retain", {}).get("regurgitation"),
        "utility_benchmark": utility.get("benchmark"),
    }


def rows_from_run_dirs(run_dirs: list[str | Path]) -> list[dict]:
    rows = []
    for run_dir in map(Path, run_dirs):
        path = run_dir / "results.json" if run_dir.is_dir() else run_dir
        if not path.is_file():
            raise UserError(f"no results.json in {run_dir}")
        try:
            results = json.loads(read_utf8_text(path))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path} is not valid JSON ({exc.msg})") from None
        rows.append(row_from_results(results.get("method") or path.parent.name, results))
    return rows


def to_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in COLUMNS})
    return buffer.getvalue()


def _cell(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def to_markdown(rows: list[dict]) -> str:
    columns = COLUMNS[:7]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def to_text(rows: list[dict]) -> str:
    return format_table([{c: row.get(c) for c in COLUMNS[:7]} for row in rows])


def plot_leaderboard(rows: list[dict], path: str | Path, title: str = "Leaderboard",
                     reference: dict | None = None) -> Path:
    """Grouped bars: final score and its three components per method (the official scale, 0 to 1).

    Rows that carry `<metric>_min` / `<metric>_max` (a summary over seeds) get range bars;
    `reference` (a row, e.g. the gold standard) draws its final score as a dashed line.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("final_score", "final score"), ("task_aggregate", "task aggregate"),
               ("mia_score", "MIA score"), ("utility", "utility")]
    width = 0.2
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(rows) + 2), 4.2))
    for offset, (key, label) in enumerate(metrics):
        xs = [i + (offset - 1.5) * width for i in range(len(rows))]
        values = [row.get(key) or 0.0 for row in rows]
        low = [v - (row.get(f"{key}_min") if row.get(f"{key}_min") is not None else v) for v, row in zip(values, rows)]
        high = [(row.get(f"{key}_max") if row.get(f"{key}_max") is not None else v) - v for v, row in zip(values, rows)]
        ax.bar(xs, values, width, label=label, yerr=[low, high] if any(low) or any(high) else None,
               error_kw={"elinewidth": 1, "capsize": 2})
    if reference is not None and reference.get("final_score") is not None:
        ax.axhline(reference["final_score"], color="black", linestyle="--", linewidth=1,
                   label=f"{reference['method']} final ({reference['final_score']:.3f})")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([row["method"] for row in rows])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score (higher is better)")
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_leaderboard(rows: list[dict], out_dir: str | Path, title: str = "Leaderboard") -> None:
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "leaderboard.csv", to_csv(rows))
    atomic_write_text(out_dir / "leaderboard.md", to_markdown(rows))
    plot_leaderboard(rows, out_dir / "leaderboard.png", title)
