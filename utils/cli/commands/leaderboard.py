"""`unlearn leaderboard RUN_DIR... [--out DIR]`: the table of several finished runs."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser("leaderboard", help="print (and optionally write) the table of finished runs")
    parser.add_argument("runs", nargs="+", help="run folders (or results.json files)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="also write leaderboard.csv, leaderboard.md and leaderboard.png into this folder")
    parser.set_defaults(func=run)


def run(args) -> int:
    from utils.evaluation.leaderboard import rows_from_run_dirs, to_text, write_leaderboard
    from utils.folders import check_not_input
    from utils.io import check_output_location

    if args.out:
        check_output_location(args.out, "folder")
        # It only adds its three files, so --out may hold the runs (runs/), but is never one of them.
        check_not_input(args.out, [("run", run) for run in args.runs], allow_holding=True)
    rows = rows_from_run_dirs(args.runs)
    print(to_text(rows))
    if args.out:
        write_leaderboard(rows, args.out)
        print(f"written to {args.out}/leaderboard.csv, leaderboard.md, leaderboard.png")
    return 0
