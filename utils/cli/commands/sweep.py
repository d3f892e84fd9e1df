"""`unlearn sweep SWEEP.yaml [--out DIR] [--set ...]`: a resumable grid of runs with a summary table."""

from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser("sweep", help="run a grid of configurations (resumable) and summarise them")
    parser.add_argument("sweep", help="sweep YAML (base config + grid), see configs/experiments/")
    parser.add_argument("--out", default=None, help="sweep folder (default: runs/sweeps/<sweep name>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key in every run (repeatable)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args) -> int:
    from utils.evaluation.tables import format_table
    from utils.experiment.sweep import SCORE_COLUMNS, load_sweep, run_sweep, summary_row
    from utils.io import check_output_location

    spec = load_sweep(args.sweep)
    runs = spec.runs(args.overrides)
    for sweep_run in runs:
        sweep_run.load()  # a bad --set fails before any run
    out = Path(args.out) if args.out else Path("runs") / "sweeps" / Path(args.sweep).stem
    check_output_location(out, "folder")
    records = run_sweep(runs, out, progress=not args.quiet, num_processes=spec.num_processes)
    rows = [summary_row(record, list(spec.grid)) for record in records]
    print(format_table(rows, ["run", *spec.grid, *SCORE_COLUMNS[:5]]))
    print(f"summary: {out / 'run_summary.csv'}, {out / 'run_summary.png'}")
    return 0
