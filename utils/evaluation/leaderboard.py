"""The leaderboard: one row per method from its results.json, as a terminal table, CSV, markdown and a chart."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from utils.evaluation.tables import format_table
from utils.io import atomic_write_text, read_json

# The first six columns are a contract (other tools read leaderboard.csv); new ones go at the end.
COLUMNS = ["method", "final_score", "task_aggregate", "mia_score", "utility", "seconds", "mia_auc",
           "forget_regurgitation", "retain_regurgitation", "utility_benchmark", "robustness"]
# The terminal and markdown tables: the headline scores, then robustness (mean recovery under attack, lower is
# better): blank in the CSV and terminal table, n/a in markdown (as every unmeasured score) when no attack ran.
TABLE_COLUMNS = [*COLUMNS[:7], "robustness"]


def row_from_results(method: str, results: dict, seconds: float | None = None) -> dict:
    """A leaderboard row; `seconds` defaults to the run's unlearning time (else its evaluation time)."""
    timings = results.get("timings", {})
    utility = results.get("utility") or {}
    overall = results.get("overall", {})
    row = {
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
        "robustness": (results.get("robustness") or {}).get("mean_recovery"),
    }
    # A NaN or infinite score (a hand-edited or damaged results.json) is no measurement: shown as unmeasured
    # (n/a in markdown, blank in the CSV and terminal table), never as "nan" or ranked in a chart.
    return {key: None if isinstance(value, float) and not math.isfinite(value) else value
            for key, value in row.items()}


def rows_from_run_dirs(run_dirs: list[str | Path]) -> list[dict]:
    """One row per run, labelled by the run's name (results.json's "name": experiment.name or its config's
    stem), else its method; runs that would share a label are labelled by their folders instead."""
    found = []
    for run_dir in map(Path, run_dirs):
        path = run_dir / "results.json" if run_dir.is_dir() else run_dir
        results = read_json(path, "results file")
        found.append((results.get("name") or results.get("method") or path.parent.name, path.parent.name, results))
    labels = [label for label, _, _ in found]
    return [row_from_results(label if labels.count(label) == 1 else folder, results)
            for label, folder, results in found]


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
    columns = TABLE_COLUMNS
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def to_text(rows: list[dict]) -> str:
    # Every run has a final score: a missing one is said (n/a), where an unmeasured column stays blank.
    return format_table([{c: "n/a" if c == "final_score" and row.get(c) is None else row.get(c)
                          for c in TABLE_COLUMNS} for row in rows])


def plot_leaderboard(rows: list[dict], path: str | Path, title: str = "Leaderboard",
                     reference: dict | None = None) -> Path:
    """The final score and its three components per method as grouped bars (`plots.score_bars`): every bar
    labelled, a zero drawn as a zero, the legend naming the utility benchmark and the MIA score's direction,
    and `reference` (default: the row whose method is `gold_standard`) as its level of each score."""
    from utils.evaluation.plots import score_bars

    return score_bars(rows, path, [row["method"] for row in rows], title, reference)


def write_leaderboard(rows: list[dict], out_dir: str | Path, title: str = "Leaderboard") -> None:
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "leaderboard.csv", to_csv(rows))
    atomic_write_text(out_dir / "leaderboard.md", to_markdown(rows))
    plot_leaderboard(rows, out_dir / "leaderboard.png", title)
