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
    from utils.data import format_table
    from utils.io import check_output_location
    from utils.sweep import SCORE_COLUMNS, load_sweep, run_sweep

    spec = load_sweep(args.sweep)
    for combination in spec.combinations():
        spec.config_for(combination, args.overrides)  # a bad --set fails before any run
    out = Path(args.out) if args.out else Path("runs") / "sweeps" / Path(args.sweep).stem
    check_output_location(out, "folder")
    rows = run_sweep(spec, out, args.overrides, progress=not args.quiet)
    print(format_table(rows, ["run", *spec.grid, *SCORE_COLUMNS[:5]]))
    print(f"summary: {out / 'run_summary.csv'}, {out / 'run_summary.png'}")
    return 0
