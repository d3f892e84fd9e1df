"""`unlearn quickstart`: the whole story in one command on the embedded default.

prepare (cached) -> gold standard + every method's config in configs/ -> leaderboard (terminal, CSV,
markdown, chart). `--set` reaches every key of every run, the data folder and split included, so the
same command runs on real files.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from methods.registry import typed
from utils.cli.main import add_config_arguments
from utils.config import Config, load_config
from utils.errors import UserError
from utils.folders import check_not_input, folder_lock, utility_file
from utils.io import atomic_write_json, check_output_location
from utils.project import config_dir

ALL_METHODS = ["ga", "gd", "kl", "npo", "simnpo", "wga", "undial", "rmu", "idk_nll", "idk_dpo", "agad", "sugd",
               "sugd_simnpo", "sugd_ceiling"]
# One method of each family, so that a cold quickstart fits five minutes on two CPU cores (README); `--methods all`
# runs every one above. Methods run one after another: a run already uses both cores (torch's threads).
DEFAULT_METHODS = ["ga", "gd", "npo", "idk_nll", "agad", "sugd", "sugd_ceiling"]
TIMINGS_FILE = "quickstart_timings.json"
DEFAULT_ATTACKS = "relearn,quantize"


def register(subparsers) -> None:
    parser = subparsers.add_parser("quickstart", help="prepare the tiny world, run every method, print the leaderboard")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="work folder (default: config workdir, artifacts/default)")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help=f"comma-separated method configs from configs/ to run, or all ({','.join(ALL_METHODS)}) "
                             "(default: %(default)s)")
    parser.add_argument("--attacks", default=DEFAULT_ATTACKS, metavar="LIST",
                        help="robustness attacks on the gold standard and every run, comma-separated (relearn, "
                             "quantize, quantize_group, nf4, prefix, roleplay, paraphrase, reverse, incontext, probe), or none; the leaderboard's robustness column (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_arguments(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    from utils.experiment.experiment import Experiment
    from utils.experiment.robustness import parse_attacks

    # The attacks go first, so a --set evaluation.attacks=... the user gives wins over --attacks' default.
    overrides = [f"evaluation.attacks=[{', '.join(parse_attacks(args.attacks))}]", *args.overrides]
    if args.out:
        overrides.append(f"workdir={args.out}")
    methods = list(ALL_METHODS) if args.methods.strip() == "all" else \
        [m.strip() for m in args.methods.split(",") if m.strip()]
    config_folder = config_dir()
    # Every config is validated before anything runs; each method gets the --set keys it declares.
    configs = method_configs(methods, overrides, config_folder)
    # The world's config takes every --set but the method keys (those belong to the methods above).
    world_overrides = [o for o in overrides if not o.startswith("method.")]
    world = Experiment.from_config(args.config or config_folder / "quickstart.yaml", world_overrides)
    check_output_location(world.workdir, "folder")
    # (prepare checks the data, MIA and tokenizer folders; the world's own files are its outputs)
    check_not_input(world.workdir, {"config file": args.config,
                                    "utility data": utility_file(world.config.evaluation.utility)})
    with folder_lock(world.workdir, "unlearn quickstart"):
        return run_in(world, configs, config_folder, args)


def run_in(world, configs: dict[str, Config], config_folder: Path, args) -> int:
    from utils.evaluation.leaderboard import add_intervals, row_from_results, to_text, write_leaderboard

    progress = not args.quiet
    started = time.perf_counter()
    report = world.prepare(progress=progress)
    prepared = time.perf_counter()
    runs_dir = world.workdir / "runs" / time.strftime("%Y%m%d-%H%M%S")

    print("[quickstart] evaluating the gold standard")
    # The same evaluation settings as every method's run (subset, MMLU shots and threshold, MIA, utility).
    gold = world.evaluate_checkpoint(world.gold_standard, runs_dir / "gold_standard", label="gold_standard",
                                     progress=progress)
    rows = [row_from_results("gold_standard", gold, seconds=report.get("timings", {}).get("gold_standard"))]
    # Wall seconds of each stage (benchmarks/quickstart_time.py reads them); the world's own are in its report.
    timings = {"prepare": prepared - started, "gold_standard_evaluation": time.perf_counter() - prepared,
               "methods": {}}
    for method, config in configs.items():
        print(f"[quickstart] running {method}")
        began = time.perf_counter()
        results = world.with_config(config, runs_dir / method, config_folder / f"{method}.yaml").run(progress=progress)
        timings["methods"][method] = time.perf_counter() - began
        rows.append(row_from_results(method, results))

    # Each run kept its per-item evaluation files: the final score's 95% document-bootstrap interval.
    add_intervals(rows, [[runs_dir / "gold_standard"], *([runs_dir / method] for method in configs)])
    title = "Leaderboard on the embedded default (tiny OLMo, mini-LUME)"
    write_leaderboard(rows, world.workdir, title=title)
    write_leaderboard(rows, runs_dir, title=title)
    print()
    print(to_text(rows))
    print("utility = synthetic multiple-choice accuracy (not MMLU); see README 'Reading the scores'")
    workdir = world.workdir
    print(f"leaderboard: {workdir / 'leaderboard.csv'}, {workdir / 'leaderboard.md'}, {workdir / 'leaderboard.png'}, "
          f"{workdir / 'leaderboard_time.png'}")
    timings["total"] = time.perf_counter() - started
    atomic_write_json(runs_dir / TIMINGS_FILE, timings)
    print(f"runs: {runs_dir}; total {timings['total']:.0f} s")
    return 0


def method_configs(names: list[str], overrides: list[str], folder: Path) -> dict[str, Config]:
    """`folder/<name>.yaml` for each name, each with the `overrides` that apply to it: a `method.*` key goes
    only to the methods that declare it (a key no method declares is an error)."""
    configs = {}
    for name in names:
        path = folder / f"{name}.yaml"
        if not path.is_file():
            raise UserError(f"--methods: no config configs/{name}.yaml")
        configs[name] = path
    loaded = {}
    method_keys = {o.split("=", 1)[0] for o in overrides if o.startswith("method.")}
    used: set[str] = set()
    for name, path in configs.items():
        declared = {f"method.{f.name}" for f in dataclasses.fields(typed(load_config(path)).method)}
        own = [o for o in overrides if not o.startswith("method.") or o.split("=", 1)[0] in declared]
        used |= method_keys & declared
        loaded[name] = typed(load_config(path, own))
    unused = sorted(method_keys - used)
    if unused:
        raise UserError(f"--set {unused[0]}: none of the methods run ({', '.join(configs)}) has that setting")
    return loaded
