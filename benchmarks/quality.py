"""The quality leaderboard: every method on one prepared world, several seeds, a small learning-rate sweep.

By default it runs on the real LUME validation split in ../shared (when present): it builds a tiny
OLMo that memorised those documents (configs/real/world.yaml, into artifacts/real), its gold
standard (trained on retain only), then unlearns with every method and scores each run the way the
official scorer does, with the real Wikipedia non-members for the MIA. Without ../shared it runs on
the mini-LUME of the embedded default (`--data mini` asks for that explicitly).

Fairness: every method runs with its own config (configs/<method>.yaml: the same epoch budget and
batch size for all) at every learning rate of one shared grid, on seed 0; the best rate per method
(by final score) then runs on the remaining seeds. The table gives per method the median over seeds
and the range [min-max], the gold standard's MIA AUC beside every method's (on this data the
reachable AUC is the gold standard's, not 0.5), and the untouched target for scale.

Each run is its own child process (`python -m utils.experiment.child run`: peak memory measured alone, a
crash does not end the benchmark, a killed benchmark resumes: finished runs are kept). `--jobs 2` runs two
at a time with one torch thread each, which uses 2 cores better than one run with two threads.

    python benchmarks/quality.py                                   # real split, all methods, 3 seeds
    python benchmarks/quality.py --data mini --out benchmarks/results/quality_mini
    python benchmarks/quality.py --methods sugd,gd --lrs 1e-4 --seeds 0   # a quick look
    python benchmarks/quality.py --protocol heldout                # lr chosen on one half, reported on the other

Every method's final score carries a 95% interval (documents resampled, combined with the seed spread;
`utils.evaluation.intervals`) and a paired comparison with the best method. `--protocol heldout` splits the
split's forget and retain documents into a tuning half and a reporting half (by document, stratified by split
and task, a fixed seed): the learning rate is chosen on the tuning half's scores and the table reports the
other half, both recomputed from each run's saved generations (the MIA documents and the utility are shared
by the two halves).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import common
from utils.data.lume import SPLITS, parse_item_id
from utils.entry import child_command, child_environment
from utils.errors import UserError
from utils.evaluation.intervals import bootstrap, headline, paired, read_evaluation, restrict
from utils.evaluation.leaderboard import COLUMNS, INTERVAL_COLUMNS, plot_leaderboard, row_from_results
from utils.evaluation.scoring import read_generations
from utils.experiment.resolved import CHILD_MODULE
from utils.experiment.sweep import SweepRun, run_sweep
from utils.io import atomic_write_json, atomic_write_text

METHODS = ["ga", "gd", "kl", "npo", "simnpo", "wga", "undial", "rmu", "idk_nll", "idk_dpo", "agad", "sugd",
           "sugd_simnpo", "sugd_ceiling", "sugd_doc_ceiling"]
# The real split leaves out the answer-level ceiling (`--methods` adds it back): there the MIA reads
# whole documents whose prompts stay memorised, so stopping at the gold standard's answer NLL leaves the
# AUC near 1 (README: Results); the document-level ceiling is the variant that fits, and the hour is short.
REAL_METHODS = [m for m in METHODS if m != "sugd_ceiling"]
REAL_WORLD_CONFIG = REPO / "configs" / "real" / "world.yaml"
# Shared grid per data. Real split, one epoch: a first sweep found every method under-forgetting at
# 1e-4, so the grid starts at 3e-4. Mini-LUME (a 1M model, 3 epochs): {1e-4, 3e-4, 1e-3}.
DEFAULT_LRS = {"real": "3e-4,1e-3", "mini": "1e-4,3e-4,1e-3"}
# Speed settings for every run on the real split (same gradients, less padding: see
# training.max_micro_batch_tokens); the mini-LUME's items are short and need none.
RUN_DEFAULTS = {"real": ["training.max_micro_batch_tokens=1024"], "mini": []}
# The epoch budget every method gets (per chunk/phase for SUGD/AGAD): on the real split one epoch, so
# that 35 runs fit the hour on 2 CPU cores; on the mini-LUME the configs' own 3.
DEFAULT_EPOCHS = {"real": 1.0, "mini": None}
# Columns summarised over seeds (median and range).
STAT_COLUMNS = ["final_score", "task_aggregate", "mia_score", "utility", "mia_auc", "forget_regurgitation",
                "retain_regurgitation", "forget_knowledge", "retain_knowledge", "robustness", "unlearning_seconds",
                "wall_seconds", "peak_rss_mb"]
TABLE_COLUMNS = [c for c in COLUMNS if c not in INTERVAL_COLUMNS] + [
    "gold_mia_auc", "lr", "seeds", "forget_knowledge", "retain_knowledge", "wall_seconds", "peak_rss_mb",
    "final_score_min", "final_score_max", "final_by_lr", *INTERVAL_COLUMNS]
# The held-out protocol's split of the documents: fixed, so every call tunes and reports on the same halves.
HELDOUT_SEED = 2025
# `--selection on|both`: the variant "<method>+select" runs <method>.yaml keeping the best-scoring checkpoint
# (utils.experiment.selection), scored every SELECT_EVERY optimiser steps.
SELECT_SUFFIX = "+select"
SELECT_EVERY = 10


def base_method(method: str) -> str:
    """The config a method label runs: "gd+select" runs gd.yaml."""
    return method.removesuffix(SELECT_SUFFIX)


def selection_overrides(every: int) -> list[str]:
    return ["training.select.keep=best", f"training.select.every={every}"]


# --------------------------------------------------------------------------------------------
# Running


def child(*args: str) -> list[str]:
    """The library's child-process entry point (prepare, evaluate) with `args`."""
    return child_command(CHILD_MODULE, *args)


@dataclass
class Setting:
    """Where the runs come from: the method configs, the overrides every run and evaluation gets, and
    the two reference models."""

    configs: Path  # folder with <method>.yaml
    base: list[str]  # `--set` items for every run and evaluation (the world, the data)
    target: str  # the model before unlearning (folder or hub name)
    gold: Path  # the gold standard's model folder
    per_method: dict[str, list[str]] = field(default_factory=dict)  # extra items for one method

    def config(self, method: str) -> Path:
        return self.configs / f"{base_method(method)}.yaml"


def prepare_world(workdir: Path, data: Path | None, world_config: Path | None, world_overrides: list[str],
                  log) -> dict:
    """`unlearn prepare` (a no-op when the world is cached); returns the prepare report."""
    command = child("prepare", "--out", str(workdir), "--quiet")
    if world_config is not None:
        command += ["--config", str(world_config)]
    for item in ([f"data.path={data}"] if data is not None else []) + world_overrides:
        command += ["--set", item]
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, env=child_environment())
    log(f"[quality] world ready in {workdir} ({time.perf_counter() - started:.0f} s)")
    return json.loads((workdir / "prepare_report.json").read_text())


def run_jobs(jobs: list[dict], jobs_at_once: int, threads: int, setting: Setting, work: Path, extra: list[str],
             log) -> list[dict]:
    """The (method, lr, seed) runs through the sweep engine, each in a child process of its own,
    `jobs_at_once` at a time, the slowest methods first (a shorter tail); finished runs are reused."""
    cost = {"sugd": 0, "sugd_ceiling": 0, "sugd_simnpo": 0, "sugd_doc_ceiling": 0, "agad": 1}
    ordered = sorted(jobs, key=lambda j: cost.get(base_method(j["method"]), 2))
    runs = [SweepRun(f"{j['method']}_lr{j['lr']:g}_seed{j['seed']}", setting.config(j["method"]),
                     [*setting.base, *setting.per_method.get(j["method"], []), f"training.learning_rate={j['lr']}",
                      f"training.seed={j['seed']}", *extra], {"method": j["method"], "lr": j["lr"], "seed": j["seed"]})
            for j in ordered]
    records = run_sweep(runs, work / "runs", progress=False, log=log, in_subprocess=True, jobs=jobs_at_once,
                        threads=threads, restart_unfinished=True)
    for record in records:
        log("  " + describe(record))
    return records


def describe(record: dict) -> str:
    head = f"{record['method']:<13} lr={record['lr']:<7g} seed={record['seed']}"
    if record.get("failed"):
        last = record["error"].strip().splitlines()[-1:] or ["?"]
        return f"{head}  FAILED: {last[0]}"
    r = record["results"]
    seconds = record.get("wall_seconds")
    return (f"{head}  final {r['final_score']:.3f}  agg {r['task_aggregate']:.3f}  MIA {r['mia_score']:.3f} "
            f"(AUC {r['mia_auc']:.3f})  utility {(r.get('utility') or {}).get('score') or 0:.3f}  "
            + (f"{seconds:.0f} s" if seconds is not None else "(time not kept)"))


def evaluate_checkpoint(name: str, model: str | Path, setting: Setting, config: Path, extra: list[str],
                        work: Path) -> dict:
    """Score a reference model (target, gold standard) once, with the runs' evaluation settings; cached."""
    target = work / name
    if not (target / "results.json").is_file():
        command = child("evaluate", "--model", str(model), "--out", str(target), "--quiet", "--config", str(config))
        for item in [*setting.base, *extra]:
            command += ["--set", item]
        subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL, env=child_environment())
    return json.loads((target / "results.json").read_text())


def world_build_seconds(workdir: Path, report: dict) -> dict[str, float]:
    """Seconds each model stage took when it was built (its stage.json), and the report's scoring."""
    seconds = {}
    for stage in ("pretrained", "target", "gold_standard"):
        marker = workdir / stage / "stage.json"
        if marker.is_file():
            seconds[stage] = float(json.loads(marker.read_text()).get("seconds", 0.0))
    if "report" in report.get("timings", {}):
        seconds["report"] = float(report["timings"]["report"])
    return seconds


def gold_forget_nll(gold: Path, config: Path, base: list[str]) -> float:
    """The gold standard's mean NLL on the forget answers: the over-forgetting ceiling of configs with
    `forget_loss_ceiling: gold_standard` when there is no prepared world (a real checkpoint)."""
    from utils.experiment.experiment import Experiment
    from utils.experiment.world import mean_nlls

    experiment = Experiment.from_config(config, base)
    settings = experiment.config
    model, tokenizer = experiment.load(str(gold), settings.model.tokenizer)
    levels = mean_nlls(model, tokenizer, experiment.lume().forget, settings.evaluation.nll_batch_size)
    return levels["text_nll" if settings.method.forget_loss_ceiling_scope == "document" else "output_nll"]


# --------------------------------------------------------------------------------------------
# The held-out protocol


def heldout_split(documents: Mapping[str, Sequence[str]], seed: int = HELDOUT_SEED) -> tuple[set[str], set[str]]:
    """(tuning, reporting) halves of `documents` (stratum -> document ids): each stratum's ids, sorted, then
    shuffled by a generator seeded with `seed` and the stratum's name, give their first half (rounded up) to
    tuning and the rest to reporting."""
    tuning: set[str] = set()
    reporting: set[str] = set()
    for stratum in sorted(documents):
        ids = sorted(set(documents[stratum]))
        random.Random(f"{seed}:{stratum}").shuffle(ids)
        half = (len(ids) + 1) // 2
        tuning.update(ids[:half])
        reporting.update(ids[half:])
    return tuning, reporting


def documents_by_stratum(evaluation_dir: Path) -> dict[str, list[str]]:
    """The document ids of an evaluation folder's generations per "split/task"."""
    strata: dict[str, list[str]] = {}
    for split in SPLITS:
        for row in read_generations(evaluation_dir / f"{split}_generations.jsonl", split):
            strata.setdefault(f"{split}/{row['task']}", []).append(parse_item_id(row["id"])[2])
    return strata


def saved_evaluation(folder: Path, documents: set[str] | None):
    """A run's saved evaluation, on `documents` only when given."""
    evaluation = read_evaluation(folder)
    if evaluation is None:
        raise UserError(f"{folder}: no saved generations, MIA losses and utility to score documents from")
    return evaluation if documents is None else restrict(evaluation, documents)


def results_on(results: dict, folder: Path, documents: set[str] | None) -> dict:
    """`results` with its headline numbers recomputed on `documents` only (None: as they are)."""
    if documents is None:
        return results
    return {**results, **headline(saved_evaluation(folder, documents))}


def records_on(records: list[dict], runs: Path, documents: set[str] | None) -> list[dict]:
    return [record if record.get("failed") or documents is None else
            {**record, "results": results_on(record["results"], runs / record["run"], documents)}
            for record in records]


# --------------------------------------------------------------------------------------------
# Summarising


def flat_row(method: str, record: dict) -> dict:
    """Everything the table needs from one run."""
    results = record["results"]
    row = row_from_results(method, results)
    overall = results.get("overall", {})
    row.update(forget_knowledge=overall.get("forget", {}).get("knowledge"),
               retain_knowledge=overall.get("retain", {}).get("knowledge"),
               unlearning_seconds=results.get("timings", {}).get("unlearning"),
               wall_seconds=record.get("wall_seconds"), peak_rss_mb=record.get("peak_rss_mb"))
    return row


def summarise(method: str, records: list[dict], final_by_lr: dict[float, float]) -> dict:
    """Median and range over seeds of every column; the chosen lr and the sweep's finals."""
    rows = [flat_row(method, r) for r in records]
    summary: dict = {"method": method, "lr": records[0]["lr"], "seeds": len(records),
                     "utility_benchmark": rows[0].get("utility_benchmark"),
                     "final_by_lr": ", ".join(f"{lr:g}: {v:.3f}" for lr, v in sorted(final_by_lr.items()))}
    for column in STAT_COLUMNS:
        values = [row[column] for row in rows if row.get(column) is not None]
        summary[column] = statistics.median(values) if values else None
        summary[f"{column}_min"] = min(values) if values else None
        summary[f"{column}_max"] = max(values) if values else None
    summary["seconds"] = summary["unlearning_seconds"]
    return summary


def checkpoint_row(name: str, results: dict) -> dict:
    row = flat_row(name, {"results": results})
    for column in STAT_COLUMNS:
        row[f"{column}_min"] = row[f"{column}_max"] = row.get(column)
    row.update(lr=None, seeds=None, seconds=None, final_by_lr="")
    return row


def best_lr(records: list[dict]) -> dict[str, float]:
    """Per method, the learning rate with the best median final score (failed runs count as 0)."""
    finals: dict[str, dict[float, list[float]]] = {}
    for r in records:
        score = 0.0 if r.get("failed") else (r["results"]["final_score"] or 0.0)
        finals.setdefault(r["method"], {}).setdefault(r["lr"], []).append(score)
    return {m: max(per_lr, key=lambda lr: statistics.median(per_lr[lr])) for m, per_lr in finals.items()}


def final_by_lr(records: list[dict], method: str) -> dict[float, float]:
    per_lr: dict[float, list[float]] = {}
    for r in records:
        if r["method"] == method:
            per_lr.setdefault(r["lr"], []).append(0.0 if r.get("failed") else r["results"]["final_score"] or 0.0)
    return {lr: statistics.median(v) for lr, v in per_lr.items()}


def cell(row: dict, key: str, digits: int = 3, spread: bool = True) -> str:
    value = row.get(key)
    if value is None:
        return "n/a"
    text = f"{value:.{digits}f}"
    low, high = row.get(f"{key}_min"), row.get(f"{key}_max")
    if spread and low is not None and high is not None and high - low > 10 ** -digits / 2:
        text += f" [{low:.{digits}f}-{high:.{digits}f}]"
    return text


def final_cell(row: dict) -> str:
    """The final score with its 95% interval, else with its range over seeds."""
    if row.get("final_score") is not None and row.get("final_score_low") is not None:
        return f"{row['final_score']:.3f} [{row['final_score_low']:.2f}, {row['final_score_high']:.2f}]"
    return cell(row, "final_score")


def add_intervals(rows: list[dict], evaluations: dict[str, list]) -> list[str]:
    """Each method row's 95% interval, and a line per method: how often it is above the best in paired draws."""
    for row in rows:
        if evaluations.get(row["method"]):
            interval = bootstrap(evaluations[row["method"]])
            row["final_score_low"], row["final_score_high"] = interval.low, interval.high
    methods = [row for row in rows if evaluations.get(row["method"]) and row.get("final_score") is not None]
    if len(methods) < 2:
        return []
    best = max(methods, key=lambda row: row["final_score"])
    lines = []
    for row in methods:
        if row is not best:
            comparison = paired(evaluations[row["method"]], evaluations[best["method"]])
            if comparison is not None:
                lines.append(f"{row['method']}: above {best['method']} in {100 * comparison['above']:.0f}% of "
                             "paired draws")
    return lines


def selection_table(rows: list[dict], evaluations: dict[str, list]) -> str:
    """With `--selection both`: one line per method, its final score [95% interval] and chosen lr without and with
    checkpoint selection, and how often selection is above the plain run in paired draws; "" otherwise."""
    by_method = {row["method"]: row for row in rows}
    pairs = [(m, m + SELECT_SUFFIX) for m in by_method if not m.endswith(SELECT_SUFFIX) and m + SELECT_SUFFIX in by_method]
    if not pairs:
        return ""
    lines = ["| method | final, last weights | lr | final, best checkpoint kept | lr | selection above last |",
             "|---|---|---|---|---|---|"]
    for plain, selected in pairs:
        comparison = paired(evaluations[selected], evaluations[plain]) \
            if evaluations.get(plain) and evaluations.get(selected) else None
        share = "n/a" if comparison is None else f"{100 * comparison['above']:.0f}% of draws"
        lines.append(f"| {plain} | {final_cell(by_method[plain])} | {by_method[plain]['lr']:g} | "
                     f"{final_cell(by_method[selected])} | {by_method[selected]['lr']:g} | {share} |")
    return "\n".join(lines) + "\n"


def markdown_table(rows: list[dict], gold_auc: float | None) -> str:
    header = ["method", "lr", "seeds", "final", "task agg", "MIA score", "MIA AUC", "gold AUC", "utility",
              "robustness", "forget regurg.", "retain regurg.", "forget QA", "retain QA", "unlearning s",
              "peak RSS MB", "final by lr (seed 0)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lr = f"{row['lr']:g}" if row.get("lr") is not None else "-"
        seconds = cell(row, "unlearning_seconds", 0) if row.get("unlearning_seconds") is not None else "-"
        rss = f"{row['peak_rss_mb']:.0f}" if row.get("peak_rss_mb") else "-"
        lines.append("| " + " | ".join([
            row["method"], lr, str(row.get("seeds") or "-"), final_cell(row), cell(row, "task_aggregate"),
            cell(row, "mia_score"), cell(row, "mia_auc"), f"{gold_auc:.3f}" if gold_auc is not None else "n/a",
            cell(row, "utility"), cell(row, "robustness") if row.get("robustness") is not None else "-",
            cell(row, "forget_regurgitation", 2), cell(row, "retain_regurgitation", 2),
            cell(row, "forget_knowledge", 2), cell(row, "retain_knowledge", 2), seconds, rss,
            row.get("final_by_lr") or ""]) + " |")
    return "\n".join(lines) + "\n"


def csv_text(rows: list[dict], gold_auc: float | None) -> str:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=TABLE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        values = dict(row, gold_mia_auc=gold_auc)
        writer.writerow({k: "" if values.get(k) is None else values.get(k) for k in TABLE_COLUMNS})
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------


def resolve_data(choice: str | None) -> tuple[Path | None, str]:
    """(data folder or None for the mini-LUME, label 'real' / 'mini' / 'custom')."""
    if choice == "mini":
        return None, "mini"
    if choice:
        return Path(choice).resolve(), "custom"
    from utils.data.lume import find_split_files
    from utils.errors import UserError

    try:
        find_split_files(common.REAL_DATA)
        return common.REAL_DATA.resolve(), "real"
    except UserError:
        return None, "mini"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="LUME data folder, or 'mini' (default: ../shared's "
                                                     "validation split when present, else the mini-LUME)")
    parser.add_argument("--workdir", default=None, help="prepared world (default: artifacts/real or "
                                                        "artifacts/default)")
    parser.add_argument("--world-config", default=None, help="config for `unlearn prepare` (default: "
                                                             "configs/real/world.yaml for real data)")
    parser.add_argument("--configs", default=str(REPO / "configs"), help="folder with <method>.yaml")
    parser.add_argument("--gold", default=None,
                        help="a gold-standard model folder: no tiny world; every run and the target come "
                             "from the configs (model.name_or_path, data.path), e.g. configs/olmo-1b")
    parser.add_argument("--methods", default=None, help="config names in --configs (default: all; on the real "
                                                         "split all but sugd_ceiling)")
    parser.add_argument("--lrs", default=None, help="learning-rate grid, comma-separated")
    parser.add_argument("--seeds", default="0,1,2", help="the first seed runs the lr sweep")
    parser.add_argument("--full-sweep", action="store_true", help="every seed at every lr (slower)")
    parser.add_argument("--protocol", choices=["seen", "heldout"], default="seen",
                        help="seen: choose the lr on the documents it reports; heldout: choose it on a tuning "
                             "half of the documents and report the other half")
    parser.add_argument("--epochs", type=float, default=None,
                        help="epoch budget of every method (default: 1 on the real split, else the configs')")
    parser.add_argument("--selection", choices=["off", "on", "both"], default="off",
                        help="on: every method keeps its best-scoring checkpoint (rows <method>+select); both: each "
                             "method with and without (default: off)")
    parser.add_argument("--select-every", type=int, default=SELECT_EVERY, metavar="N",
                        help="with --selection: score the checkpoint every N optimiser steps (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: cores/jobs)")
    parser.add_argument("--out", default=None, help="output folder (default: benchmarks/results/quality_<data>)")
    parser.add_argument("--work", default=None, help="run folders (default: artifacts/quality_<data>, or "
                                                     "<out>/work with --out)")
    parser.add_argument("--attacks", default="relearn,quantize",
                        help="robustness attacks on every run and reference model (the robustness column), "
                             "comma-separated, or none")
    parser.add_argument("--set", dest="extra", action="append", default=[], help="extra override for every run")
    parser.add_argument("--world-set", dest="world_extra", action="append", default=[],
                        help="extra override for `unlearn prepare` (must match how the world was built, "
                             "or prepare rebuilds it)")
    args = parser.parse_args(argv)

    log = print
    configs = Path(args.configs).resolve()
    real_default = args.data != "mini" and not args.gold and (args.data or common.REAL_DATA.is_dir())
    methods = [m for m in (args.methods or ",".join(REAL_METHODS if real_default else METHODS)).split(",") if m]
    for method in methods:
        if not (configs / f"{method}.yaml").is_file():
            parser.error(f"no config for method '{method}' ({configs / method}.yaml)")
    if args.select_every < 1:
        parser.error(f"--select-every must be at least 1, got {args.select_every}")
    variants = {"off": [""], "on": [SELECT_SUFFIX], "both": ["", SELECT_SUFFIX]}[args.selection]
    methods = [f"{m}{suffix}" for m in methods for suffix in variants]
    seeds = [int(x) for x in args.seeds.split(",")]
    threads = args.threads or max(1, (os.cpu_count() or 2) // args.jobs)
    started = time.perf_counter()

    if args.gold:
        # A real checkpoint: the configs name the model and the data; the gold standard was trained
        # beforehand (`unlearn run <configs>/gold_standard.yaml`).
        from methods.registry import typed
        from utils.config import load_config

        label, report, target_report = "checkpoint", None, None
        first = load_config(configs / f"{base_method(methods[0])}.yaml", args.extra)
        data = Path(first.data.path).resolve() if args.data is None else Path(args.data).resolve()
        base = [f"data.path={data}"]
        setting = Setting(configs, base, first.model.name_or_path or "", Path(args.gold).resolve())
        for method in methods:
            if getattr(typed(load_config(setting.config(method), args.extra)).method, "forget_loss_ceiling", None) == "gold_standard":
                level = gold_forget_nll(setting.gold, setting.config(method), [*base, *args.extra])
                setting.per_method[method] = [f"method.forget_loss_ceiling={level}"]
                log(f"[quality] {method}: forget-loss ceiling {level:.3f} (the gold standard's forget NLL)")
        lrs_text = args.lrs or ",".join(f"{load_config(setting.config(m)).training.learning_rate:g}"
                                        for m in methods[:1])
    else:
        data, label = resolve_data(args.data)
        workdir = Path(args.workdir or (common.REAL_WORLD if label != "mini" else REPO / "artifacts" / "default")).resolve()
        world_config = Path(args.world_config) if args.world_config else (
            REAL_WORLD_CONFIG if label != "mini" else None)
        report = prepare_world(workdir, data, world_config, args.world_extra, log)
        target_report = report["target"]
        log(f"[quality] target before unlearning: forget regurgitation "
            f"{target_report['forget']['regurgitation']:.3f} knowledge {target_report['forget']['knowledge']:.3f}; "
            f"retain regurgitation {target_report['retain']['regurgitation']:.3f} knowledge "
            f"{target_report['retain']['knowledge']:.3f}")
        base = [f"workdir={workdir}", *([f"data.path={data}"] if data is not None else [])]
        setting = Setting(configs, base, str(workdir / "target"), workdir / "gold_standard")
        lrs_text = args.lrs or DEFAULT_LRS["mini" if label == "mini" else "real"]
        kind = "mini" if label == "mini" else "real"
        args.epochs = DEFAULT_EPOCHS[kind] if args.epochs is None else args.epochs
        args.extra = RUN_DEFAULTS[kind] + args.extra
    for method in methods:
        if method.endswith(SELECT_SUFFIX):
            setting.per_method[method] = [*setting.per_method.get(base_method(method), []),
                                          *selection_overrides(args.select_every)]
    if args.epochs is not None:
        args.extra = [f"training.epochs={args.epochs:g}", *args.extra]
    from utils.experiment.robustness import parse_attacks

    args.extra = [f"evaluation.attacks=[{', '.join(parse_attacks(args.attacks))}]", *args.extra]
    lrs = [float(x) for x in lrs_text.split(",")]
    out = Path(args.out or common.RESULTS_DIR / f"quality_{label}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    # Run folders (models, checkpoints: tens of MB each) stay out of benchmarks/results.
    work = Path(args.work or (out / "work" if args.out else REPO / "artifacts" / f"quality_{label}")).resolve()

    reference_config = setting.config(methods[0])
    gold_results = evaluate_checkpoint("gold_standard", setting.gold, setting, reference_config, args.extra, work)
    target_results = evaluate_checkpoint("target", setting.target, setting, reference_config, args.extra, work)
    tuning = reporting = None
    if args.protocol == "heldout":
        tuning, reporting = heldout_split(documents_by_stratum(work / "gold_standard"))
        log(f"[quality] held out: lr chosen on {len(tuning)} documents, reported on {len(reporting)}")
    gold = checkpoint_row("gold_standard", results_on(gold_results, work / "gold_standard", reporting))
    target = checkpoint_row("target", results_on(target_results, work / "target", reporting))
    log(f"[quality] gold standard: final {gold['final_score']:.3f}, MIA AUC {gold['mia_auc']:.3f}; "
        f"target: final {target['final_score']:.3f}, MIA AUC {target['mia_auc']:.3f}")

    # Stage 1: the learning-rate sweep on the first seed (or on every seed with --full-sweep).
    sweep_seeds = seeds if args.full_sweep else seeds[:1]
    jobs = [{"method": m, "lr": lr, "seed": s} for m in methods for lr in lrs for s in sweep_seeds]
    log(f"[quality] sweep: {len(jobs)} runs ({len(methods)} methods x lrs {lrs} x seeds {sweep_seeds}), "
        f"{args.jobs} at once, {threads} thread(s) each")
    records = run_jobs(jobs, args.jobs, threads, setting, work, args.extra, log)
    chosen = best_lr(records_on(records, work / "runs", tuning))
    # Stage 2: the remaining seeds at each method's best rate.
    extra_jobs = [{"method": m, "lr": chosen[m], "seed": s} for m in methods for s in seeds
                  if s not in sweep_seeds]
    if extra_jobs:
        log(f"[quality] seeds: {len(extra_jobs)} runs at each method's best lr "
            f"({', '.join(f'{m} {lr:g}' for m, lr in chosen.items())})")
        records += run_jobs(extra_jobs, args.jobs, threads, setting, work, args.extra, log)

    rows = [gold]
    tuned, reported = records_on(records, work / "runs", tuning), records_on(records, work / "runs", reporting)
    evaluations = {}
    for method in methods:
        finished = [r for r in reported if r["method"] == method and r["lr"] == chosen[method] and not r.get("failed")]
        if finished:
            rows.append(summarise(method, finished, final_by_lr(tuned, method)))
            kept = [work / "runs" / r["run"] for r in finished]
            if all(read_evaluation(folder) is not None for folder in kept):
                evaluations[method] = [saved_evaluation(folder, reporting) for folder in kept]
    comparisons = add_intervals(rows, evaluations)
    rows.append(target)
    gold_auc = gold["mia_auc"]
    table = markdown_table(rows, gold_auc)
    total = time.perf_counter() - started
    failed = [r for r in records if r.get("failed")]
    budget = f"{args.epochs:g} epoch(s)" if args.epochs is not None else "the configs' epochs"
    notes = [(f"data: {data or 'the mini-LUME'}; every method {budget}; {len(records)} runs ({len(failed)} failed), {args.jobs} at once x "
             f"{threads} torch thread(s); this call took {total / 60:.1f} min")]
    reused = sum(1 for r in records if r.get("reused"))
    if reused:
        notes.append(f"{reused} of the runs were finished by an earlier call and reused")
    if args.protocol == "heldout":
        notes.append(f"held-out protocol: lr chosen on {len(tuning)} documents (final by lr: that half), the "
                     f"table on the other {len(reporting)}; the MIA documents and the utility serve both halves")
    if evaluations:
        notes.append("final [95% interval]: documents (forget, retain, MIA members and non-members) resampled, "
                     "1000 draws, with the seed spread; utility held fixed")
        notes.extend(comparisons)
    if report is not None:
        built = world_build_seconds(workdir, report)
        notes.append("world build, cold (cached afterwards; each stage's own record): "
                     + ", ".join(f"{k} {v / 60:.1f} min" for k, v in built.items())
                     + f" = {sum(built.values()) / 60:.1f} min")
    if target_report is not None:
        notes.append(f"target before unlearning: forget regurgitation {target_report['forget']['regurgitation']:.3f}"
                     f", retain regurgitation {target_report['retain']['regurgitation']:.3f}")
    best = max((r for r in rows if r["method"] not in ("gold_standard", "target")),
               key=lambda r: r["final_score"] or 0.0, default=None)
    if best is not None and gold["final_score"]:
        notes.append(f"best method: {best['method']} (final {best['final_score']:.3f} = "
                     f"{best['final_score'] / gold['final_score']:.2f}x the gold standard's {gold['final_score']:.3f})")
    print(table)
    print("\n".join(notes))

    atomic_write_text(out / "quality.md", table + "\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    with_and_without = selection_table(rows, evaluations)
    if with_and_without:
        print(with_and_without)
        atomic_write_text(out / "quality_selection.md", with_and_without + "\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    atomic_write_text(out / "quality.csv", csv_text(rows, gold_auc))
    atomic_write_json(out / "quality.json", {"rows": rows, "gold_mia_auc": gold_auc, "notes": notes,
                                             "prepare_report": report, "lrs": lrs, "seeds": seeds,
                                             "protocol": args.protocol,
                                             "documents": None if tuning is None else
                                             {"tuning": sorted(tuning), "reporting": sorted(reporting)},
                                             "environment": common.environment(),
                                             "records": [{k: v for k, v in r.items() if k != "results"}
                                                         for r in records]})
    title = {"real": "the real LUME validation split", "mini": "the mini-LUME"}.get(label, str(data))
    bars = "95% interval" if evaluations else "range"
    plot_leaderboard(rows[:-1], out / "quality.png", title=f"Quality on {title} (median over seeds, bars: {bars})",
                     reference=gold)
    log(f"[quality] wrote {out}/quality.md, quality.csv, quality.json, quality.png")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
