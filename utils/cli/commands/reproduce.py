"""`unlearn reproduce RUN_DIR [--tolerance FILE] [--out DIR]`: run a finished run again and compare every score."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "reproduce", help="rerun a finished run from its recorded config, inputs and seed and compare every score "
                          "(exit 0: all inside their bands, 1: some outside, 2: the inputs changed)")
    parser.add_argument("run", help="a finished run folder (results.json and config.yaml)")
    parser.add_argument("--tolerance", default=None, metavar="FILE",
                        help="YAML mapping of score name (final_score, task_aggregate, mia_score, mia_auc, utility, "
                             "robustness, term, exact_memorisation, extraction_strength, default) to an absolute band "
                             "(default: the seed spread measured by the quality benchmark)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="folder of the new run (default: <RUN_DIR>-reproduced-<time> beside it)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args) -> int:
    from utils.experiment.reproduce import reproduce
    from utils.folders import check_not_input
    from utils.io import check_output_location

    if args.out:
        check_output_location(args.out, "folder")
        check_not_input(args.out, [("run", args.run)])
    return reproduce(args.run, out=args.out, tolerance=args.tolerance, progress=not args.quiet)
