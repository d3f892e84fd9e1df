"""`unlearn quickstart`: the whole story in one command on the embedded default.

prepare (cached) -> gold standard + every method's config in configs/ -> leaderboard (terminal, CSV,
markdown, chart). `--set` reaches every key of every run, the data folder and split included, so the
same command runs on real files.
"""

from __future__ import annotations

import time
from pathlib import Path

from utils.cli import add_config_arguments
from utils.config import load_config
from utils.io import check_output_location
from utils.project import config_dir

DEFAULT_METHODS = ["ga", "gd", "kl", "npo", "agad", "sugd", "sugd_ceiling"]


def register(subparsers) -> None:
    parser = subparsers.add_parser("quickstart", help="prepare the tiny world, run every method, print the leaderboard")
    parser.add_argument("--out", default=None, help="work dir (default: the config's workdir, artifacts/default)")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help="comma-separated method configs from configs/ to run")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_arguments(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    from methods.runner import run_unlearning
    from utils.commands.evaluate import resolve_utility_spec
    from utils.data import load_lume, resolve_mia
    from utils.errors import UserError
    from utils.evaluation import evaluate_model, write_evaluation
    from utils.leaderboard import row_from_results, to_text, write_leaderboard
    from utils.models import load_model_and_tokenizer
    from utils.prepare import prepare

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"workdir={args.out}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    config_folder = config_dir()
    for method in methods:
        if not (config_folder / f"{method}.yaml").is_file():
            raise UserError(f"--methods: no config configs/{method}.yaml")
    base = load_config(args.config or config_folder / "quickstart.yaml", overrides)
    method_configs = {m: load_config(config_folder / f"{m}.yaml", overrides) for m in methods}  # validate all first
    workdir = Path(base.workdir)
    check_output_location(workdir, "folder")
    progress = not args.quiet
    started = time.perf_counter()
    report = prepare(base, progress=progress)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs_dir = workdir / "runs" / stamp

    rows = []
    print("[quickstart] evaluating the gold standard")
    data_dir = base.data.path or str(workdir / "data")
    lume = load_lume(data_dir, base.data.split)
    _, mia_documents, mia_missing = resolve_mia(base.data.mia_path, data_dir, base.data.split)
    model, tokenizer = load_model_and_tokenizer(str(workdir / "gold_standard"))
    gold = evaluate_model(model, tokenizer, lume, mia_documents=mia_documents,
                          utility_spec=resolve_utility_spec(base.evaluation.utility, workdir),
                          max_new_tokens=base.evaluation.max_new_tokens, batch_size=base.evaluation.batch_size,
                          nll_batch_size=base.evaluation.nll_batch_size, progress=progress,
                          evaluated={"model": str(workdir / "gold_standard"), "data": data_dir},
                          warnings=[mia_missing] if mia_missing else [])
    gold.results["method"] = "gold_standard"
    write_evaluation(gold, runs_dir / "gold_standard")
    rows.append(row_from_results("gold_standard", gold.results,
                                 seconds=report.get("timings", {}).get("gold_standard")))
    for method, config in method_configs.items():
        print(f"[quickstart] running {method}")
        results = run_unlearning(config, runs_dir / method, progress=progress)
        rows.append(row_from_results(method, results))

    write_leaderboard(rows, workdir, title="Leaderboard on the embedded default (tiny OLMo, mini-LUME)")
    write_leaderboard(rows, runs_dir, title="Leaderboard on the embedded default (tiny OLMo, mini-LUME)")
    print()
    print(to_text(rows))
    print("utility = synthetic multiple-choice accuracy (not MMLU); see README 'Reading the scores'")
    print(f"leaderboard: {workdir / 'leaderboard.csv'}, {workdir / 'leaderboard.md'}, {workdir / 'leaderboard.png'}")
    print(f"runs: {runs_dir}; total {time.perf_counter() - started:.0f} s")
    return 0
