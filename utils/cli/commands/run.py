"""`unlearn run CONFIG.yaml [--set ...] [--out DIR] [--resume]`: unlearn with one method, then evaluate.

`--dry-run [--schedule-out FILE]` prints the schedule the run would train (utils/experiment/schedule.py) instead.
"""

from __future__ import annotations

from pathlib import Path

from utils.cli.main import add_config_arguments, add_run_folder_flags
from utils.errors import UserError
from utils.evaluation.sharding import Shards
from utils.experiment.doctor import model_shape
from utils.experiment.experiment import Experiment
from utils.experiment.resolved import latest_run_dir
from utils.experiment.robustness import results_text
from utils.experiment.run import holds_run
from utils.experiment.schedule import check_schedule_out, schedule_table
from utils.folders import experiment_inputs
from utils.io import atomic_write_json
from utils.models.adapters import layer_problem


def register(subparsers) -> None:
    parser = subparsers.add_parser("run", help="run one unlearning method (config) and evaluate it")
    add_config_arguments(parser, positional=True)
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="run folder (default: runs/<name>-<start time>, the name being experiment.name or "
                             "the config file's name)")
    parser.add_argument("--resume", action="store_true",
                        help="continue a killed run from its last finished chunk (without --out: the newest "
                             "runs/<name>-<start time> of this config)")
    add_run_folder_flags(parser, "skip the final evaluation")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the schedule (phases, optimiser steps, examples and tokens per step, "
                             "checkpoints) without loading a model or writing the run folder")
    parser.add_argument("--schedule-out", default=None, metavar="FILE",
                        help="with --dry-run: also write the schedule as JSON to FILE")
    parser.add_argument("--requests", type=int, default=None, metavar="K",
                        help="unlearn the forget set as K successive deletion requests (by document), each from the "
                             "model the previous one left; after each, every request's forget terms and retain are "
                             "scored (requests_summary.csv/.md, requests.png); resumable per request")
    parser.set_defaults(func=run)


def run(args) -> int:
    experiment = Experiment.from_config(args.config, args.overrides, run_dir=args.out)
    if args.resume and args.overwrite:
        raise UserError("--resume continues the run in --out and --overwrite replaces it: pass one of them")
    if args.resume and args.out is None and not args.dry_run:
        latest = latest_run_dir(experiment.name)
        if latest is None:
            raise UserError(f"--resume: no run of {experiment.name} in runs/ to continue (its folders are "
                            f"runs/{experiment.name}-<start time>); name the run folder with --out")
        experiment = experiment.with_config(experiment.config, run_dir=latest)
    if args.dry_run:
        if args.requests is not None:
            raise UserError("--dry-run plans one run; drop --requests to see the schedule of each request's run")
        return dry_run(experiment, args)
    if args.requests is not None:
        from utils.experiment.requests import run_requests

        if args.schedule_out:
            raise UserError("--schedule-out writes the schedule of a dry run: pass it with --dry-run")
        run_requests(experiment, args.requests, resume=args.resume, overwrite=args.overwrite,
                     progress=not args.quiet)
        print(f"run folder: {experiment.run_dir}")
        return 0
    if args.schedule_out:
        raise UserError("--schedule-out writes the schedule of a dry run: pass it with --dry-run")
    if args.resume:
        check_holds_run(experiment.run_dir)
    results = experiment.run(resume=args.resume, progress=not args.quiet, evaluate=not args.no_eval,
                             overwrite=args.overwrite)
    if results and Shards.from_environment().is_main:  # one report, also under a launcher of several processes
        print(results_text(results))
        print(f"run folder: {experiment.run_dir}")
    return 0


def dry_run(experiment: Experiment, args) -> int:
    if args.resume or args.overwrite:
        flag = "--resume" if args.resume else "--overwrite"
        raise UserError(f"--dry-run shows the whole schedule and leaves the run folder alone: drop {flag}")
    schedule_out = Path(args.schedule_out) if args.schedule_out else None
    if schedule_out is not None:
        check_schedule_out(schedule_out, experiment.run_dir, experiment_inputs(experiment))
    check_adapter_fits(experiment)
    plan = experiment.plan()
    print(schedule_table(plan))
    if schedule_out is not None:
        atomic_write_json(schedule_out, plan)
        print(f"schedule: {schedule_out}")
    return 0


def check_holds_run(run_dir: Path) -> None:
    """The CLI's `--resume` continues a run, so a folder with none is refused rather than started afresh
    (`Experiment.run(resume=True)` from a notebook does start one: re-running its cell continues or reuses)."""
    if not holds_run(run_dir):
        raise UserError(f"{run_dir} holds no run to resume (no config.yaml or checkpoint); drop --resume to "
                        "start one")


def check_adapter_fits(experiment: Experiment) -> None:
    """The layers the adapter trains against the start model's depth, when its shape is known without loading
    it (a local config.json, a known hub name): the check the run makes once the model is loaded."""
    shape = model_shape(experiment)
    problem = None if shape is None else layer_problem(experiment.config.adapter, shape.layers)
    if problem:
        raise UserError(f"{problem} ({shape.source})")
