"""The first hour on a GPU: the seed's OLMo-1B runs end to end, beside the seed's published numbers.

    python scripts/gpu_plan.py --data semeval25-unlearning-data --split train

On one GPU (an H100 or similar) this
  1. checks everything it needs before loading a model: a GPU, the data split, the utility benchmark
     (MMLU from `python scripts/olmo_assets.py` unless --utility says otherwise), every config;
  2. prints each run's schedule (what `unlearn run CONFIG --dry-run` prints);
  3. evaluates the untouched 1B target (`configs/olmo-1b/base.yaml`'s model);
  4. runs and evaluates each method's `configs/olmo-1b/<method>.yaml` (default: sugd, the seed's winning
     setting, then agad and gd);
  5. prints and writes the table (gpu_plan.md / .csv / .json in --out) with the seed's published 1B SUGD
     row under it.
Every step is resumable: run the same command again after a kill and finished runs are read, unfinished
ones resumed from their last checkpoint. The seed's numbers are the official leaderboard's (private test
split); these are on the split you give, so they are comparable in kind, not equal by construction.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from utils.errors import UserError

CONFIGS = REPO / "configs" / "olmo-1b"
DEFAULT_METHODS = ("sugd", "agad", "gd")
# The seed's SUGD on the 1B model, official leaderboard (docs/benchmark.md "Official results").
SEED_1B_SUGD = {"label": "sugd (seed, published)", "final_score": 0.688, "task_aggregate": 0.964,
                "mia_score": 0.857, "utility": 0.242}


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="LUME data folder (the organisers' files)")
    parser.add_argument("--split", choices=["train", "validation"], default="train",
                        help="which split to unlearn and score (default: train, as the seed)")
    parser.add_argument("--model", default=None, help="the 1B target: hub name or local folder "
                                                      "(default: the one configs/olmo-1b/base.yaml names)")
    parser.add_argument("--tokenizer", default=None, help="its tokenizer (default: the config's)")
    parser.add_argument("--utility", default=None,
                        help="utility benchmark: mmlu:DIR, mmlu:hf:ID or none (default: the MMLU of "
                             "`python scripts/olmo_assets.py`)")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help=f"configs/olmo-1b/<method>.yaml to run, in order (default: {','.join(DEFAULT_METHODS)})")
    parser.add_argument("--out", default=None,
                        help="folder for the runs and the table (default: runs/gpu-plan/<split>: a plan on "
                             "another split never reads these results)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every run (repeatable)")
    parser.add_argument("--allow-cpu", action="store_true",
                        help="run without a GPU (for checking the script on a small model only)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def default_utility() -> str:
    from utils.data.olmo_assets import find_assets, missing_reason

    assets = find_assets()
    if assets is None:
        raise UserError(f"no MMLU for the utility score: {missing_reason()}; run `python scripts/olmo_assets.py` "
                        "or pass --utility mmlu:DIR / mmlu:hf:cais/mmlu / none")
    return f"mmlu:{assets / 'mmlu'}"


def shared_overrides(args) -> list[str]:
    overrides = [f"data.path={args.data}", f"data.split={args.split}",
                 f"evaluation.utility={args.utility or default_utility()}"]
    if args.model:
        overrides.append(f"model.name_or_path={args.model}")
    if args.tokenizer:
        overrides.append(f"model.tokenizer={args.tokenizer}")
    return [*overrides, *args.overrides]


def experiments(args, out: Path) -> list:
    """The target's evaluation and one experiment per method, every config resolved before any model loads."""
    from utils.experiment import Experiment

    overrides = shared_overrides(args)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise UserError("--methods names no method")
    missing = [m for m in methods if not (CONFIGS / f"{m}.yaml").is_file()]
    if missing:
        known = sorted(p.stem for p in CONFIGS.glob("*.yaml") if p.stem not in ("base", "baseline", "sugd_training"))
        raise UserError(f"no config configs/olmo-1b/{missing[0]}.yaml (there are: {', '.join(known)})")
    target = Experiment.from_config(str(CONFIGS / "base.yaml"), overrides, out / "target")
    return [("target", target)] + [
        (method, Experiment.from_config(str(CONFIGS / f"{method}.yaml"), overrides, out / method))
        for method in methods]


def main(argv: list[str] | None = None) -> int:
    import torch

    from utils.environment import describe_environment
    from utils.evaluation.leaderboard import row_from_results
    from utils.evaluation.tables import format_table
    from utils.experiment.schedule import schedule_table
    from utils.io import atomic_write_json, atomic_write_text

    args = parse_args(argv)
    try:
        if not torch.cuda.is_available() and not args.allow_cpu:
            raise UserError("no GPU: this plan is for a GPU machine (--allow-cpu runs it anyway, for a small model)")
        out = Path(args.out or f"runs/gpu-plan/{args.split}")
        plan = experiments(args, out)
        for _, experiment in plan:
            experiment.check_inputs()
        for name, experiment in plan[1:]:
            print(f"\n== {name}: {experiment.run_dir}\n{schedule_table(experiment.plan())}", flush=True)
        rows = []
        started = time.perf_counter()
        for name, experiment in plan:
            print(f"\n== {name}", flush=True)
            clock = time.perf_counter()
            if name == "target":
                results = experiment.finished_results() or experiment.evaluate_checkpoint(
                    experiment.start_model, experiment.run_dir, tokenizer=experiment.config.model.tokenizer,
                    progress=not args.quiet, label="target")
            else:
                results = experiment.run(resume=True, progress=not args.quiet)
            row = row_from_results(name, results)
            row["wall_minutes"] = (time.perf_counter() - clock) / 60
            rows.append(row)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    columns = ["method", "final_score", "task_aggregate", "mia_score", "mia_auc", "utility", "seconds",
               "wall_minutes"]
    table = [{c: row.get(c) for c in columns} for row in rows]
    seed = {"method": SEED_1B_SUGD["label"], **{c: SEED_1B_SUGD.get(c) for c in columns[1:]}}
    text = format_table(table + [seed], columns)
    total = (time.perf_counter() - started) / 60
    print(f"\n{text}\n\n(this run: {total:.1f} min; the seed's row is the official leaderboard's 1B SUGD on the "
          f"private test split, these are on the {args.split} split of {args.data})")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "gpu_plan.md", "```\n" + text + "\n```\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows([*table, seed])
    atomic_write_text(out / "gpu_plan.csv", buffer.getvalue())
    atomic_write_json(out / "gpu_plan.json", {"rows": table, "seed": SEED_1B_SUGD, "minutes": total,
                                              "split": args.split, "data": str(args.data),
                                              "overrides": shared_overrides(args),
                                              "environment": describe_environment()})
    print(f"written to {out / 'gpu_plan.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
