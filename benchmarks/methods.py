"""All methods side by side on one prepared world: quality, time and peak memory.

Each (method, learning rate, seed) runs as its own `unlearn run` subprocess, so its peak resident
memory is measured alone (rusage of the child) and a crash in one run does not end the benchmark.
Every method gets the same epoch budget and the same small learning-rate sweep; the table reports
each method at its best learning rate (by median final score over seeds), beside the gold standard.

    python benchmarks/methods.py --workdir artifacts/default            # builds the world if missing
    python benchmarks/methods.py --methods sugd,gd --lrs 1e-4,3e-4 --seeds 0
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from utils.leaderboard import COLUMNS, row_from_results, to_csv, to_markdown

METHODS = ["ga", "gd", "kl", "npo", "agad", "sugd"]


def run_one(method: str, lr: float, seed: int, workdir: Path, out: Path, extra: list[str]) -> dict:
    """Run one configuration in a subprocess; returns its results plus wall time and peak RSS."""
    run_dir = out / f"{method}_lr{lr:g}_seed{seed}"
    if (run_dir / "results.json").is_file():  # finished earlier: a killed benchmark resumes
        record = json.loads((run_dir / "bench.json").read_text())
        return record
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    command = [sys.executable, "-m", "utils.cli", "run", str(REPO / "configs" / f"{method}.yaml"), "--out",
               str(run_dir), "--quiet", "--set", f"workdir={workdir}", "--set", f"training.learning_rate={lr}",
               "--set", f"training.seed={seed}"]
    for item in extra:
        command += ["--set", item]
    started = time.perf_counter()
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log_path = out / f"{run_dir.name}.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        # wait4 instead of wait: the child's own peak RSS, not the max over every child so far.
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        print(log_path.read_text()[-2000:], file=sys.stderr)
        return {"method": method, "lr": lr, "seed": seed, "failed": True, "seconds": seconds}
    results = json.loads((run_dir / "results.json").read_text())
    record = {"method": method, "lr": lr, "seed": seed, "wall_seconds": seconds, "results": results,
              "peak_rss_mb": _peak_rss_mb(usage)}
    (run_dir / "bench.json").write_text(json.dumps(record))
    return record


def _peak_rss_mb(usage) -> float:
    return usage.ru_maxrss / 1024.0  # Linux reports kilobytes


def best_rows(records: list[dict]) -> list[dict]:
    """Per method: the learning rate with the best median final score; medians and spreads over seeds."""
    rows = []
    by_method: dict[str, dict[float, list[dict]]] = {}
    for record in records:
        if not record.get("failed"):
            by_method.setdefault(record["method"], {}).setdefault(record["lr"], []).append(record)
    for method, per_lr in by_method.items():
        def median_final(runs):
            return statistics.median(r["results"]["final_score"] or 0.0 for r in runs)

        lr, runs = max(per_lr.items(), key=lambda kv: median_final(kv[1]))
        row = {}
        for column in ("final_score", "task_aggregate", "mia_score", "utility", "mia_auc",
                       "forget_regurgitation", "retain_regurgitation"):
            values = [row_from_results(method, r["results"])[column] for r in runs]
            values = [v for v in values if v is not None]
            row[column] = statistics.median(values) if values else None
            row[f"{column}_spread"] = (max(values) - min(values)) if len(values) > 1 else 0.0
        growth = [r["results"].get("memory", {}).get("peak_rss_growth_bytes") for r in runs]
        growth = [g / 2**20 for g in growth if g is not None]
        row.update(method=method, lr=lr, seconds=statistics.median(r["results"]["timings"]["unlearning"] for r in runs),
                   peak_rss_mb=statistics.median(r["peak_rss_mb"] for r in runs), seeds=len(runs),
                   train_growth_mb=statistics.median(growth) if growth else None,
                   utility_benchmark=runs[0]["results"]["utility"]["benchmark"],
                   all_lrs={f"{k:g}": median_final(v) for k, v in sorted(per_lr.items())})
        rows.append(row)
    return rows


def gold_row(workdir: Path, out: Path) -> dict:
    gold_dir = out / "gold_standard"
    if not (gold_dir / "results.json").is_file():
        subprocess.run([sys.executable, "-m", "utils.cli", "evaluate", "--model", str(workdir / "gold_standard"),
                        "--out", str(gold_dir), "--quiet", "--set", f"workdir={workdir}"], cwd=REPO, check=True,
                       stdout=subprocess.DEVNULL)
    results = json.loads((gold_dir / "results.json").read_text())
    row = row_from_results("gold_standard", results)
    row.update(lr=None, seeds=1, peak_rss_mb=None, all_lrs={})
    return row


def print_table(rows: list[dict]) -> str:
    header = ("| method | lr | final | task agg | MIA score | MIA AUC | utility | forget regurg. | retain regurg. "
              "| unlearning s | peak RSS MB | training RSS growth MB | final by lr |")
    lines = [header, "|" + "---|" * 13]
    for row in rows:
        def cell(key, digits=3, row=row):
            value = row.get(key)
            if value is None:
                return "n/a"
            spread = row.get(f"{key}_spread")
            text = f"{value:.{digits}f}"
            return text + (f" ±{spread / 2:.{digits}f}" if spread else "")
        lrs = ", ".join(f"{k}: {v:.3f}" for k, v in row.get("all_lrs", {}).items())
        lines.append(f"| {row['method']} | {row['lr'] if row['lr'] is not None else '-'} | {cell('final_score')} | "
                     f"{cell('task_aggregate')} | {cell('mia_score')} | {cell('mia_auc')} | {cell('utility')} | "
                     f"{cell('forget_regurgitation', 2)} | {cell('retain_regurgitation', 2)} | "
                     f"{row['seconds'] or 0:.1f} | {row['peak_rss_mb'] or 0:.0f} | "
                     f"{row.get('train_growth_mb') or 0:.1f} | {lrs} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="artifacts/default")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--lrs", default="1e-4,3e-4,1e-3")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--out", default="benchmarks/results/methods")
    parser.add_argument("--set", dest="extra", action="append", default=[], help="extra overrides for every run")
    parser.add_argument("--ceiling-from-gold", action="store_true",
                        help="set method.forget_loss_ceiling to the gold standard's mean forget-answer NLL")
    args = parser.parse_args()
    workdir, out = Path(args.workdir).resolve(), Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    # Always through prepare: it is a no-op when the world is cached and fills in a report made by older code.
    subprocess.run([sys.executable, "-m", "utils.cli", "prepare", "--out", str(workdir), "--quiet"], cwd=REPO,
                   check=True, stdout=subprocess.DEVNULL)
    if args.ceiling_from_gold:
        report = json.loads((workdir / "prepare_report.json").read_text())
        ceiling = report["gold_standard"]["forget"]["output_nll"]
        print(f"forget-loss ceiling from the gold standard: {ceiling:.3f}")
        args.extra.append(f"method.forget_loss_ceiling={ceiling}")
    records = []
    for method in args.methods.split(","):
        for lr in [float(x) for x in args.lrs.split(",")]:
            for seed in [int(x) for x in args.seeds.split(",")]:
                record = run_one(method, lr, seed, workdir, out, args.extra)
                records.append(record)
                if record.get("failed"):
                    print(f"{method} lr={lr:g} seed={seed}: FAILED")
                else:
                    r = record["results"]
                    print(f"{method} lr={lr:g} seed={seed}: final {r['final_score']:.3f} agg {r['task_aggregate']:.3f} "
                          f"AUC {r['mia_auc']:.3f} utility {r['utility']['score']:.3f} "
                          f"({r['timings']['unlearning']:.0f} s, {record['peak_rss_mb']:.0f} MB)", flush=True)
    rows = [gold_row(workdir, out)] + best_rows(records)
    table = print_table(rows)
    print(table)
    (out / "table.md").write_text(table + "\n")
    (out / "records.json").write_text(json.dumps({"rows": rows, "records": [
        {k: v for k, v in r.items() if k != "results"} for r in records]}, indent=1, default=str))
    (out / "leaderboard.csv").write_text(to_csv([{k: r.get(k) for k in COLUMNS} for r in rows]))
    (out / "leaderboard.md").write_text(to_markdown(rows))


if __name__ == "__main__":
    main()
