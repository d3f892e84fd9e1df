"""`unlearn reproduce`: run a finished run again from what it recorded and say whether every score came back.

A run records in results.json the fingerprints of its inputs (`inputs`: the data split's files, the MIA documents,
the utility set, the model it started from and, where the method reads one, the gold standard), beside its
resolved config (config.yaml: seed, data, model, method) and the environment that made it. Reproducing checks the
inputs first: a file changed or gone is exit 2, naming it, before anything trains. Then it runs the recorded
config into a new folder, and compares every score with its tolerance band: the official headline numbers, the 12
terms, the robustness and memorisation numbers when both runs have them. Exit 0 when all are inside their bands,
1 when one is outside; the table of every score then and now and each difference in the environment (library
versions, device, dtype, threads, commit) are printed either way.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path

import yaml

from utils.errors import UserError
from utils.evaluation.metrics import aggregated_term_names
from utils.evaluation.tables import format_table
from utils.experiment.fingerprints import INPUTS_KEY, changed_inputs, input_fingerprints
from utils.io import read_json, read_utf8_text

# The bands without `--tolerance` (absolute differences): the upper quartile over method/lr groups of each score's
# spread (max - min) over seeds 0-2 in the held-out quality benchmark (benchmarks/seed_spread.py on its runs;
# benchmarks/results/seed_spread.yaml). The MIA AUC and score did not move in three groups of four (most runs sit at
# AUC 1.0), so they take `default`, the final score's band; `term` is every one of the 12 terms.
DEFAULT_BANDS = {"default": 0.0621, "final_score": 0.0621, "task_aggregate": 0.1567, "utility": 0.0208,
                 "robustness": 0.0801, "term": 0.1364, "exact_memorisation": 0.0787, "extraction_strength": 0.1064}
EXIT_INSIDE, EXIT_OUTSIDE, EXIT_INPUTS_CHANGED = 0, 1, 2


# --------------------------------------------------------------------------------------------
# Scores and bands


def scores(results: Mapping) -> dict[str, float | None]:
    """Every compared score of a results.json: headline numbers, the 12 terms, robustness, memorisation."""
    utility = results.get("utility") or {}
    out: dict[str, float | None] = {
        "final_score": results.get("final_score"), "task_aggregate": results.get("task_aggregate"),
        "mia_score": results.get("mia_score"), "mia_auc": results.get("mia_auc"),
        "utility": utility.get("score") if isinstance(utility, Mapping) else None}
    out.update({f"term {name}": value for name, value in
                zip(aggregated_term_names(), results.get("aggregated_terms") or [], strict=False)})
    robustness = results.get("robustness")
    if isinstance(robustness, Mapping):
        out["robustness"] = robustness.get("mean_recovery")
    for split, entry in (results.get("memorisation") or {}).items():
        for metric in ("exact_memorisation", "extraction_strength"):
            out[f"{split} {metric}"] = entry.get(metric)
    return out


def read_tolerance(path: Path) -> dict[str, float]:
    """A tolerance file: a YAML mapping of score name (or `default`, `term`, for every term) to a non-negative
    absolute band; anything else is a one-line error."""
    try:
        data = yaml.safe_load(read_utf8_text(path, "tolerance file"))
    except yaml.YAMLError as exc:
        raise UserError(f"tolerance file {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or not data:
        raise UserError(f"tolerance file {path}: expected a mapping of score name to an absolute band")
    known = {"default", "term", "final_score", "task_aggregate", "mia_score", "mia_auc", "utility", "robustness",
             "exact_memorisation", "extraction_strength"}
    bands = {}
    for name, value in data.items():
        if name not in known:
            raise UserError(f"tolerance file {path}: unknown score {name!r} (known: {', '.join(sorted(known))})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise UserError(f"tolerance file {path}: {name} must be a non-negative number, got {value!r}")
        bands[name] = float(value)
    bands.setdefault("default", 0.0)
    return bands


def band_for(score: str, bands: Mapping[str, float]) -> float:
    if score.startswith("term "):
        return bands.get("term", bands["default"])
    for metric in ("exact_memorisation", "extraction_strength"):
        if score.endswith(metric):
            return bands.get(metric, bands["default"])
    return bands.get(score, bands["default"])


def compare(then: Mapping, now: Mapping, bands: Mapping[str, float]) -> list[dict]:
    """One row per score either run has: then, now, |difference|, band, and whether it is inside. A score measured
    in one run and not the other is outside (None on both sides is inside: neither measured it)."""
    before, after = scores(then), scores(now)
    rows = []
    for name in dict.fromkeys([*before, *after]):
        old, new = before.get(name), after.get(name)
        band = band_for(name, bands)
        if old is None or new is None:
            difference, inside = None, old is None and new is None
        else:
            difference = abs(float(new) - float(old))
            inside = difference <= band + 1e-12
        rows.append({"score": name, "then": old, "now": new, "difference": difference, "band": band,
                     "inside": inside})
    return rows


def environment_differences(then: Mapping, now: Mapping) -> list[str]:
    return [f"{key}: {then.get(key)} -> {now.get(key)}" for key in dict.fromkeys([*then, *now])
            if then.get(key) != now.get(key)]


def report_text(rows: list[dict], environment: list[str]) -> str:
    def show(value) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    table = format_table([{"score": r["score"], "then": show(r["then"]), "now": show(r["now"]),
                           "difference": show(r["difference"]), "band": f"{r['band']:g}",
                           "inside": "yes" if r["inside"] else "NO"} for r in rows],
                         ["score", "then", "now", "difference", "band", "inside"])
    lines = [table, ""]
    lines += ["environment differences:", *(f"  {line}" for line in environment)] if environment else \
        ["environment: the same (library versions, device, dtype, threads, commit)"]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The command


def finished_run(run_dir: Path) -> tuple[dict, Path]:
    """(results, config path) of a finished run folder, or a one-line error saying what is missing."""
    results_path, config_path = run_dir / "results.json", run_dir / "config.yaml"
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run folder")
    if not results_path.is_file() or not config_path.is_file():
        raise UserError(f"{run_dir}: not a finished run (reproduce needs its results.json and config.yaml)")
    results = read_json(results_path, "results file")
    if not isinstance(results, dict) or "final_score" not in results:
        raise UserError(f"{results_path}: not a run's results (no final_score)")
    return results, config_path


def reproduce(run_dir: str | Path, out: str | Path | None = None, tolerance: str | Path | None = None,
              progress: bool = True, log=print) -> int:
    """Check the inputs, rerun, compare; print the report and return the exit code (0, 1 or 2)."""
    from utils.experiment.experiment import Experiment

    run_dir = Path(run_dir)
    results, config_path = finished_run(run_dir)
    bands = read_tolerance(Path(tolerance)) if tolerance is not None else dict(DEFAULT_BANDS)
    destination = Path(out) if out is not None else \
        run_dir.with_name(f"{run_dir.name}-reproduced-{time.strftime('%Y%m%d-%H%M%S')}")
    experiment = Experiment.from_config(config_path, [], run_dir=destination)
    recorded = results.get(INPUTS_KEY)
    if recorded is None:
        log("[reproduce] this run recorded no input fingerprints (made before they were kept): its inputs cannot be "
            "checked, only its scores")
    else:
        changed = changed_inputs(recorded, input_fingerprints(experiment))
        if changed:
            log("[reproduce] the inputs differ from the run's, so its scores cannot be reproduced:")
            for line in changed:
                log(f"  {line}")
            return EXIT_INPUTS_CHANGED
    log(f"[reproduce] running {config_path} again into {destination}")
    now = experiment.run(progress=progress)
    rows = compare(results, now, bands)
    environment = environment_differences(results.get("environment") or {}, now.get("environment") or {})
    log(report_text(rows, environment))
    outside = [row["score"] for row in rows if not row["inside"]]
    log(f"[reproduce] {len(rows) - len(outside)} of {len(rows)} scores inside their bands"
        + (f"; outside: {', '.join(outside)}" if outside else ""))
    return EXIT_OUTSIDE if outside else EXIT_INSIDE
