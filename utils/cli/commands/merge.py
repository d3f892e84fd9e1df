"""`unlearn merge RUN_DIR RUN_DIR... [--how ties|linear] [--density D] [--weights W...] [--out DIR]`: merge what
finished runs of one starting model changed into one model, then evaluate it like a run."""

from __future__ import annotations

from utils.cli.main import add_run_folder_flags
from utils.models.merging import DEFAULT_DENSITY, HOWS


def register(subparsers) -> None:
    parser = subparsers.add_parser("merge", help="merge finished runs of one model (TIES or linear) and evaluate "
                                                 "the result like a run")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="finished run folders (at least two) unlearned from the same model; each saved as "
                             "full weights or as a LoRA adapter")
    parser.add_argument("--how", choices=HOWS, default="ties",
                        help="ties: trim each run's change to its largest entries, elect a sign per weight, average "
                             "the agreeing entries; linear: the weighted sum of the changes (default: ties)")
    parser.add_argument("--density", type=float, default=None, metavar="D",
                        help=f"with ties: the fraction of each run's change kept, in (0, 1] (default: "
                             f"{DEFAULT_DENSITY})")
    parser.add_argument("--weights", type=float, nargs="+", default=None, metavar="W",
                        help="one weight per run, in their order (default: 1 each for ties, whose mean already "
                             "averages; 1/number of runs each for linear, the plain average)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="folder of the merged run (default: runs/<name>-<start time>, the name being "
                             "merge-<how> or --set experiment.name)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override an evaluation.*, data.* or experiment.name key of the first run's config, "
                             "which the merged model is evaluated with (repeatable)")
    add_run_folder_flags(parser, "save the merged model without evaluating it")
    parser.set_defaults(func=run)


def run(args) -> int:
    from utils.evaluation.metrics import summary_text
    from utils.experiment.merge import merge_runs

    run_dir, results = merge_runs(args.runs, args.out, how=args.how, weights=args.weights, density=args.density,
                                  overrides=args.overrides, overwrite=args.overwrite, evaluate=not args.no_eval,
                                  progress=not args.quiet)
    if results:
        print(summary_text(results))
    print(f"run folder: {run_dir}")
    return 0
