"""The leaderboard: one row per method from its results.json, as a terminal table, CSV, markdown and a chart.

Runs of one method that differ only in their training seed share a row: each score is the median over the
seeds, and `final_score_low` / `final_score_high` are the 95% interval of the document bootstrap combined with
the seed spread (`utils.evaluation.intervals`); empty for a run that kept no per-item evaluation files.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from pathlib import Path

from utils.evaluation.intervals import DEFAULT_DRAWS, bootstrap, paired, read_evaluation
from utils.evaluation.tables import format_table
from utils.io import atomic_write_text, read_json

# The first six columns are a contract (other tools read leaderboard.csv); new ones go at the end.
COLUMNS = ["method", "final_score", "task_aggregate", "mia_score", "utility", "seconds", "mia_auc",
           "forget_regurgitation", "retain_regurgitation", "utility_benchmark", "robustness",
           "final_score_low", "final_score_high"]
INTERVAL_COLUMNS = COLUMNS[-2:]  # the final score's 95% interval (utils.evaluation.intervals)
REFERENCES = ("gold_standard", "target")  # rows of reference models: compared with the best, never the best
# The terminal and markdown tables: the headline scores, then robustness (mean recovery under attack, lower is
# better): blank in the CSV and terminal table, n/a in markdown (as every unmeasured score) when no attack ran.
TABLE_COLUMNS = [*COLUMNS[:7], "robustness"]
# The robustness matrix: one column per attack that some row measured ("recovery_relearn",
# "recovery_quantize_4bit", ...), after every fixed column; `robustness` is their mean.
RECOVERY_PREFIX = "recovery_"


def attack_columns(rows: list[dict]) -> list[str]:
    """The per-attack recovery columns any row has, in the order they first appear."""
    return list(dict.fromkeys(key for row in rows for key in row if key.startswith(RECOVERY_PREFIX)))


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
    for attack, entry in (results.get("robustness") or {}).items():
        if isinstance(entry, dict) and "recovery" in entry:
            row[f"{RECOVERY_PREFIX}{attack}"] = entry["recovery"]
    # A NaN or infinite score (a hand-edited or damaged results.json) is no measurement: shown as unmeasured
    # (n/a in markdown, blank in the CSV and terminal table), never as "nan" or ranked in a chart.
    return {key: None if isinstance(value, float) and not math.isfinite(value) else value
            for key, value in row.items()}


def training_seed(results: dict) -> int | None:
    """The training seed a run's results.json records (in its saved config), None when it records none."""
    config = (results.get("evaluated") or {}).get("config") or {}
    seed = (config.get("training") or {}).get("seed") if isinstance(config, dict) else None
    return seed if isinstance(seed, int) else None


def rows_from_run_dirs(run_dirs: list[str | Path], draws: int = DEFAULT_DRAWS) -> list[dict]:
    """One row per run, labelled by the run's name (results.json's "name": experiment.name or its config's
    stem), else its method. Runs sharing a label but each with its own training seed make one row (the median
    over the seeds); other runs that would share a label are labelled by their folders instead."""
    found = []
    for run_dir in map(Path, run_dirs):
        path = run_dir / "results.json" if run_dir.is_dir() else run_dir
        results = read_json(path, "results file")
        found.append((results.get("name") or results.get("method") or path.parent.name, path.parent, results))
    by_label: dict[str, list] = {}
    for entry in found:
        by_label.setdefault(entry[0], []).append(entry)
    rows, folders = [], []
    for label, entries in by_label.items():
        seeds = [training_seed(results) for _, _, results in entries]
        if len(entries) == 1 or (None not in seeds and len(set(seeds)) == len(seeds)):
            rows.append(median_row([row_from_results(label, results) for _, _, results in entries]))
            folders.append([folder for _, folder, _ in entries])
        else:
            for _, folder, results in entries:
                rows.append(row_from_results(folder.name, results))
                folders.append([folder])
    add_intervals(rows, folders, draws)
    return rows


def median_row(rows: list[dict]) -> dict:
    """Rows of one method's seeds as one: each number the median over the seeds that measured it."""
    if len(rows) == 1:
        return rows[0]
    merged = dict(rows[0])
    for key, value in rows[0].items():
        values = [row[key] for row in rows if isinstance(row.get(key), (int, float))]
        if isinstance(value, (int, float)) or (value is None and values):
            merged[key] = statistics.median(values) if values else None
    merged["seeds"] = len(rows)
    return merged


def add_intervals(rows: list[dict], run_folders: list[list[Path]], draws: int = DEFAULT_DRAWS,
                  seed: int = 0) -> None:
    """Fill each row's `final_score_low` / `final_score_high` from its runs' saved evaluations (left None when a
    run lacks them) and `above_best`: how often, over paired draws, it is above the row with the best score."""
    saved = []
    for row, folders in zip(rows, run_folders):
        evaluations = [read_evaluation(folder) for folder in folders]
        usable = bool(evaluations) and None not in evaluations and row.get("final_score") is not None
        saved.append(evaluations if usable else None)
        if usable:
            interval = bootstrap(evaluations, draws, seed)
            row["final_score_low"], row["final_score_high"] = interval.low, interval.high
    candidates = [i for i, evaluations in enumerate(saved) if evaluations is not None]
    # The best method is the one to beat; a reference model (the gold standard) is not a contender.
    methods = [i for i in candidates if rows[i]["method"] not in REFERENCES]
    if not methods or len(candidates) < 2:
        return
    best = max(methods, key=lambda i: rows[i]["final_score"])
    for i in candidates:
        if i != best:
            comparison = paired(saved[i], saved[best], draws, seed)
            if comparison is not None:
                row = rows[i]
                row["above_best"] = {"best": rows[best]["method"], **comparison}


def to_csv(rows: list[dict]) -> str:
    columns = [*COLUMNS, *attack_columns(rows)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return buffer.getvalue()


def _cell(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _final_cell(row: dict) -> str:
    """The final score with its 95% interval when it has one: "0.812 [0.77, 0.85]"."""
    text = _cell(row.get("final_score"))
    if row.get("final_score_low") is not None and row.get("final_score_high") is not None:
        text += f" [{row['final_score_low']:.2f}, {row['final_score_high']:.2f}]"
    return text


def comparison_lines(rows: list[dict]) -> list[str]:
    """One line per method compared with the best: "kl: above sugd in 12% of draws"."""
    return [f"{row['method']}: above {row['above_best']['best']} in {100 * row['above_best']['above']:.0f}% "
            f"of draws" for row in rows if row.get("above_best")]


def to_markdown(rows: list[dict]) -> str:
    columns = [*TABLE_COLUMNS, *attack_columns(rows)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_final_cell(row) if c == "final_score" else _cell(row.get(c))
                                        for c in columns) + " |")
    compared = comparison_lines(rows)
    if any(row.get("final_score_low") is not None for row in rows):
        lines += ["", ("final_score [95% interval: documents resampled, with the seed spread when there are "
                       "several seeds; utility held fixed]")]
    if compared:
        lines += ["", "Paired document bootstrap against the best:", "", *(f"- {line}" for line in compared)]
    return "\n".join(lines) + "\n"


def to_text(rows: list[dict]) -> str:
    # Every run has a final score: a missing one is said (n/a), where an unmeasured column stays blank.
    columns = TABLE_COLUMNS + [c for c in ("final_score_low", "final_score_high")
                               if any(row.get(c) is not None for row in rows)]
    table = format_table([{c: "n/a" if c == "final_score" and row.get(c) is None else row.get(c)
                           for c in columns} for row in rows])
    return "\n".join([table, *comparison_lines(rows)])


def with_error_bar(row: dict) -> dict:
    """The row with its interval as the chart's error bar of the final score (`score_bars` reads
    `final_score_min` / `_max`), stretched to hold the point: a skewed bootstrap can leave it just outside."""
    low, high, point = row.get("final_score_low"), row.get("final_score_high"), row.get("final_score")
    if low is None or high is None or point is None:
        return row
    return {**row, "final_score_min": min(low, point), "final_score_max": max(high, point)}


def plot_leaderboard(rows: list[dict], path: str | Path, title: str = "Leaderboard",
                     reference: dict | None = None) -> Path:
    """The final score and its three components per method as grouped bars (`plots.score_bars`): every bar
    labelled, a zero drawn as a zero, the legend naming the utility benchmark and the MIA score's direction,
    and `reference` (default: the row whose method is `gold_standard`) as its level of each score. A row's
    95% interval is the final score's error bar, and its paired comparison with the best is under its name."""
    from utils.evaluation.plots import score_bars

    shown = [with_error_bar(row) for row in rows]
    labels = [row["method"] + (f"\n{100 * row['above_best']['above']:.0f}% > {row['above_best']['best']}"
                               if row.get("above_best") else "") for row in rows]
    return score_bars(shown, path, labels, title, reference)


def write_leaderboard(rows: list[dict], out_dir: str | Path, title: str = "Leaderboard") -> None:
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "leaderboard.csv", to_csv(rows))
    atomic_write_text(out_dir / "leaderboard.md", to_markdown(rows))
    plot_leaderboard(rows, out_dir / "leaderboard.png", title)
    from utils.evaluation.plots import plot_score_time  # matplotlib only when a chart is drawn

    plot_score_time(rows, out_dir / "leaderboard_time.png", f"{title}: final score against unlearning time")
    if attack_columns(rows):
        from utils.evaluation.plots import plot_recovery_matrix

        plot_recovery_matrix(rows, attack_columns(rows), out_dir / "leaderboard_robustness.png",
                             f"{title}: recovery under each attack")
