"""`unlearn quickstart`: the whole story in one command on the embedded default.

prepare (cached) -> gold standard + every method's config in configs/ -> leaderboard (terminal, CSV,
markdown, chart). `--set` reaches every key of every run, the data folder and split included, so the
same command runs on real files.
"""

from __future__ import annotations

import time

from utils.cli.main import add_config_arguments
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
    from utils.evaluation.leaderboard import row_from_results, to_text, write_leaderboard
    from utils.experiment.experiment import Experiment, method_configs

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"workdir={args.out}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    config_folder = config_dir()
    # Every config is validated before anything runs; each method gets the --set keys it declares.
    configs = method_configs(methods, overrides, config_folder)
    world = Experiment.from_config(args.config or config_folder / "quickstart.yaml", overrides)
    check_output_location(world.workdir, "folder")
    progress = not args.quiet
    started = time.perf_counter()
    report = world.prepare(progress=progress)
    runs_dir = world.workdir / "runs" / time.strftime("%Y%m%d-%H%M%S")

    print("[quickstart] evaluating the gold standard")
    # The same evaluation settings as every method's run (subset, MMLU shots and threshold, MIA, utility).
    gold = world.evaluate_checkpoint(world.gold_standard, runs_dir / "gold_standard", label="gold_standard",
                                     progress=progress)
    rows = [row_from_results("gold_standard", gold, seconds=report.get("timings", {}).get("gold_standard"))]
    for method, config in configs.items():
        print(f"[quickstart] running {method}")
        results = world.with_config(config, runs_dir / method).run(progress=progress)
        rows.append(row_from_results(method, results))

    title = "Leaderboard on the embedded default (tiny OLMo, mini-LUME)"
    write_leaderboard(rows, world.workdir, title=title)
    write_leaderboard(rows, runs_dir, title=title)
    print()
    print(to_text(rows))
    print("utility = synthetic multiple-choice accuracy (not MMLU); see README 'Reading the scores'")
    workdir = world.workdir
    print(f"leaderboard: {workdir / 'leaderboard.csv'}, {workdir / 'leaderboard.md'}, {workdir / 'leaderboard.png'}")
    print(f"runs: {runs_dir}; total {time.perf_counter() - started:.0f} s")
    return 0
