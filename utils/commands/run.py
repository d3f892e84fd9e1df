"""`unlearn run CONFIG.yaml [--set ...] [--out DIR] [--resume]`: unlearn with one method, then evaluate."""

from __future__ import annotations

from pathlib import Path

from utils.cli import add_config_arguments
from utils.config import load_config
from utils.errors import UserError


def register(subparsers) -> None:
    parser = subparsers.add_parser("run", help="run one unlearning method (config) and evaluate it")
    add_config_arguments(parser, positional=True)
    parser.add_argument("--out", default=None, help="run folder (default: runs/<method>)")
    parser.add_argument("--resume", action="store_true", help="continue a killed run from its last finished chunk")
    parser.add_argument("--no-eval", action="store_true", help="skip the final evaluation")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace whatever run the --out folder holds, finished or not (says what it replaces)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args) -> int:
    from methods.runner import run_unlearning
    from utils.metrics import summary_text

    config = load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / config.method.name
    if args.resume and args.overwrite:
        raise UserError("--resume continues the run in --out and --overwrite replaces it: pass one of them")
    results = run_unlearning(config, out, resume=args.resume, progress=not args.quiet, evaluate=not args.no_eval,
                             overwrite=args.overwrite)
    if results:
        print(summary_text(results))
        print(f"run folder: {out}")
    return 0
