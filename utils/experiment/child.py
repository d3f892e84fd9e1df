"""The library's own entry point for work done in a child process: `Experiment.prepare(isolated=True)`, the
sweep's runs in subprocesses and the quality benchmark's reference evaluations start it instead of the CLI.

    python -m utils.experiment.child prepare --config FILE --out DIR [--quiet]
    python -m utils.experiment.child run CONFIG --out DIR [--set KEY=VALUE ...] [--resume] [--quiet]
    python -m utils.experiment.child evaluate --model M --out DIR [--config FILE] [--set KEY=VALUE ...] [--quiet]

Each ends as a command does (utils.entry): one `error:` line and exit code 2 for bad input, 143 after SIGTERM,
130 after Ctrl-C; `--quiet` silences every progress bar. Its callers start it with `utils.entry.child_command`
and `child_environment` (the project's own packages first on the path: another `utils` in the working folder
cannot shadow them); they sit below this module and name it by CHILD_MODULE.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from utils.config import replace_keys
from utils.entry import OneLineParser, ignore_late_stops, library_progress_bars, run_command
from utils.evaluation.sharding import Shards
from utils.experiment.experiment import Experiment
from utils.experiment.resolved import CHILD_MODULE
from utils.experiment.robustness import results_text
from utils.folders import experiment_inputs
from utils.io import check_output_location


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=f"python -m {CHILD_MODULE}")
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser("prepare")
    prepare.add_argument("--config", default=None)
    prepare.add_argument("--out", default=None)
    run = commands.add_parser("run")
    run.add_argument("config")
    run.add_argument("--out", required=True)
    run.add_argument("--resume", action="store_true")
    evaluate = commands.add_parser("evaluate")
    evaluate.add_argument("--model", required=True)
    evaluate.add_argument("--out", required=True)
    evaluate.add_argument("--config", default=None)
    for command in (prepare, run, evaluate):
        command.add_argument("--set", dest="overrides", action="append", default=[])
        command.add_argument("--quiet", action="store_true")
    return parser


def prepare_world(args) -> int:
    """The tiny world of the config into --out (or its workdir); the parent reads prepare_report.json."""
    experiment = Experiment.from_config(args.config, args.overrides)
    check_output_location(args.out or experiment.workdir, "folder")
    experiment.prepare(args.out, progress=not args.quiet)
    return 0


def run_one(args) -> int:
    """One run into --out (resumed with --resume), its scores printed for the parent's log."""
    experiment = Experiment.from_config(args.config, args.overrides, run_dir=args.out)
    results = experiment.run(resume=args.resume, progress=not args.quiet)
    if results and Shards.from_environment().is_main:
        print(results_text(results))
    return 0


def evaluate_model(args) -> int:
    """The config's evaluation of --model into --out, robustness measured against the config's own model."""
    experiment = Experiment.from_config(args.config, args.overrides)
    target = experiment.target
    experiment = experiment.with_config(replace_keys(experiment.config, {"model.name_or_path": args.model}))
    results = experiment.evaluate_into(Path(args.out), experiment_inputs(experiment, model=experiment.target),
                                       progress=not args.quiet, target=target)
    if Shards.from_environment().is_main:
        print(results_text(results))
    return 0


COMMANDS = {"prepare": prepare_world, "run": run_one, "evaluate": evaluate_model}


def main(argv: list[str] | None = None) -> int:
    def work() -> int:
        args = build_parser().parse_args(argv)
        with library_progress_bars(not args.quiet):
            return COMMANDS[args.command](args)

    code = run_command(work)
    ignore_late_stops()
    return code


if __name__ == "__main__":
    sys.exit(main())
