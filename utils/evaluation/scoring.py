"""The official "compute metrics only" mode: scores from generations that already exist (`unlearn score DIR`).

A folder holds `forget_generations.jsonl` and `retain_generations.jsonl` (one object per line with `id`, `task`,
`expected_output`, `model_output`; other fields are ignored), optionally `mia_nll.json` (`{"member": [...],
"nonmember": [...]}` mean token NLLs) and `mmlu_metrics.json` (`{"average_acc": x}`), the layout
`utils.evaluation.evaluate.write_evaluation` writes. No model is loaded. Every input is validated before anything
is scored: a problem ends in one line naming the file, the row and what is wrong.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from utils.data.lume import EMPTY_GOLD, SPLITS, check_row_fields, check_text_present, parse_item_id
from utils.environment import describe_environment
from utils.errors import UserError
from utils.evaluation.metrics import DEFAULT_MMLU_THRESHOLD, build_results, compute_terms, mia_auc
from utils.io import is_finite_number, read_json, read_jsonl

GENERATION_FIELDS = ("id", "task", "expected_output", "model_output")
MIA_FILE = "mia_nll.json"
MMLU_FILE = "mmlu_metrics.json"


def read_generations(path: Path, split: str) -> list[dict[str, Any]]:
    """The records of one generations file, validated, each tagged with `split`."""
    if not path.is_file():
        raise UserError(f"generations file not found: {path}")
    records: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for line_number, row in read_jsonl(path):
        check_row_fields(path, f"line {line_number}", row, GENERATION_FIELDS, "field")
        check_text_present(path, f"line {line_number}", row, "expected_output", EMPTY_GOLD)
        try:
            parse_item_id(row["id"])
        except ValueError as exc:
            raise UserError(f"{path}: line {line_number}: {exc}") from None
        if row["id"] in seen:
            raise UserError(f"{path}: line {line_number} repeats id {row['id']!r} "
                            f"(first on line {seen[row['id']]})")
        seen[row["id"]] = line_number
        records.append({name: row[name] for name in GENERATION_FIELDS} | {"split": split})
    if not records:
        raise UserError(f"{path}: no generations (the file is empty)")
    return records


def read_mia_nll(path: Path) -> dict[str, list[float]]:
    """`{"member": [...], "nonmember": [...]}`: non-empty lists of finite per-document losses."""
    data = read_json(path, "MIA losses file")
    out = {}
    for name in ("member", "nonmember"):
        if name not in data:
            raise UserError(f"{path}: lacks the '{name}' list of losses")
        values = data[name]
        if not isinstance(values, list) or not values:
            raise UserError(f"{path}: '{name}' must be a non-empty list of numbers")
        for position, value in enumerate(values):
            if not is_finite_number(value):
                raise UserError(f"{path}: '{name}'[{position}] is {value!r}, not a finite number")
        out[name] = [float(v) for v in values]
    return out


def read_mmlu_average(path: Path) -> float:
    """The `average_acc` of an MMLU metrics file, a number in [0, 1]."""
    data = read_json(path, "MMLU metrics file")
    if "average_acc" not in data:
        raise UserError(f"{path}: lacks 'average_acc'")
    value = data["average_acc"]
    if not is_finite_number(value) or not 0.0 <= value <= 1.0:
        raise UserError(f"{path}: 'average_acc' is {value!r}, not a number between 0 and 1")
    return float(value)


def score_directory(directory: str | Path, mmlu_threshold: float = DEFAULT_MMLU_THRESHOLD) -> dict[str, Any]:
    """Read and validate everything in `directory` and return the results dict (nothing written)."""
    if not (isinstance(mmlu_threshold, (int, float)) and 0.0 <= mmlu_threshold <= 1.0):
        raise UserError(f"--mmlu-threshold must be a number between 0 and 1, got {mmlu_threshold}")
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"folder not found: {directory}")
    records = []
    for split in SPLITS:
        records.extend(read_generations(directory / f"{split}_generations.jsonl", split))
    # A benchmark item is in one split only; an id in both files means one was pasted over the other.
    forget_ids = {r["id"] for r in records if r["split"] == "forget"}
    in_both = next((r["id"] for r in records if r["split"] == "retain" and r["id"] in forget_ids), None)
    if in_both is not None:
        raise UserError(f"{directory}: id {in_both!r} is in both forget_generations.jsonl and "
                        "retain_generations.jsonl (each item belongs to one split)")
    mia_path, mmlu_path = directory / MIA_FILE, directory / MMLU_FILE
    mia = read_mia_nll(mia_path) if mia_path.is_file() else None
    mmlu = read_mmlu_average(mmlu_path) if mmlu_path.is_file() else None

    start = time.perf_counter()
    scores = compute_terms(records)
    timings = {"scoring": time.perf_counter() - start}
    auc = None if mia is None else mia_auc(mia["member"], mia["nonmember"])
    evaluated = {
        "source": "generations",
        "directory": str(directory),
        "mia_nll": str(mia_path) if mia is not None else None,
        "utility": str(mmlu_path) if mmlu is not None else None,
    }
    if mia is not None:
        evaluated["mia_documents"] = {"member": len(mia["member"]), "nonmember": len(mia["nonmember"])}
    results = build_results(
        scores, mia_auc=auc, mia_attacks={} if auc is None else {"loss": auc},
        utility_benchmark=None if mmlu is None else "mmlu", utility_score=mmlu,
        mmlu_threshold=mmlu_threshold, timings=timings, evaluated=evaluated)
    results["environment"] = describe_environment()  # the generations' own environment is not known here
    return results


def replaceable_results(path: Path) -> bool:
    """Whether `path` may be written: absent, or an earlier re-score of generations (which this one redoes).

    A results.json that evaluated a model (a run, `unlearn evaluate`) holds what generations cannot give
    back (the utility details, memory, the method), so it is never replaced without `--overwrite`.
    """
    if not path.exists():
        return True
    try:
        previous = read_json(path, "results file")
    except (OSError, UserError):  # unreadable: not known to be a re-score, so kept
        return False
    evaluated = previous.get("evaluated")
    return isinstance(evaluated, dict) and evaluated.get("source") == "generations"
