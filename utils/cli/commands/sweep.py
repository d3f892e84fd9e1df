"""`unlearn sweep SWEEP.yaml [--config BASE.yaml] [--out DIR] [--set ...]`: a resumable grid of runs with a
summary table.

`--config` replaces the sweep file's `base` (the config every run starts from), so one grid runs on another
model or data without a copy of the sweep file; the file must still be a valid sweep with its own base.
"""

from __future__ import annotations

from pathlib import Path

from utils.cli.main import add_config_arguments


def register(subparsers) -> None:
    parser = subparsers.add_parser("sweep", help="run a grid of configurations (resumable) and summarise them")
    parser.add_argument("sweep", help="sweep YAML (base config + grid), see configs/experiments/")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="sweep folder (default: runs/sweeps/<sweep name>, or runs/sweeps/<sweep name>-<config "
                             "name> with --config); a run already finished in it is read back, not redone")
    add_config_arguments(parser,
                         config_help="the config every run starts from, instead of the sweep file's 'base'",
                         set_help="override a config key in every run, over the sweep file's 'set' (repeatable)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def default_out(sweep: str, config: str | None) -> Path:
    """runs/sweeps/<sweep name>; with --config, <sweep name>-<config name>, so runs from another base are
    never read back as finished runs of this one."""
    name = Path(sweep).stem if config is None else f"{Path(sweep).stem}-{Path(config).stem}"
    return Path("runs") / "sweeps" / name


def run(args) -> int:
    import dataclasses

    from utils.evaluation.tables import format_table
    from utils.experiment.experiment import Experiment
    from utils.experiment.sweep import SCORE_COLUMNS, load_sweep, run_sweep, summary_row
    from utils.folders import check_not_input, experiment_inputs
    from utils.io import check_output_location

    spec = load_sweep(args.sweep)
    if args.config is not None:
        spec = dataclasses.replace(spec, base=Path(args.config).resolve())
    runs = spec.runs(args.overrides)
    for sweep_run in runs:
        sweep_run.load()  # a bad --config or --set fails before any run
    out = Path(args.out) if args.out else default_out(args.sweep, args.config)
    check_output_location(out, "folder")
    check_not_input(out, {"sweep file": args.sweep, "base config": spec.base})
    for sweep_run in runs:
        check_not_input(out, experiment_inputs(Experiment(sweep_run.load(), source=sweep_run.config)))
    records = run_sweep(runs, out, progress=not args.quiet, num_processes=spec.num_processes)
    rows = [summary_row(record, list(spec.grid)) for record in records]
    print(format_table(rows, ["run", *spec.grid, *SCORE_COLUMNS[:5]]))
    print(f"summary: {out / 'run_summary.csv'}, {out / 'run_summary.png'}")
    return 0
