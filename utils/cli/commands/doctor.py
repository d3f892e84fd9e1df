"""`unlearn doctor CONFIG [--processes N]`: check this machine against a config before a run (memory per
process, disk, the model, tokenizer and data reachable, the launch, rank 0's writes against the collective
timeout); exit 0 when every check passes, 2 when one fails (a warning does not fail)."""

from __future__ import annotations

from utils.cli.main import add_config_arguments
from utils.errors import UserError


def register(subparsers) -> None:
    parser = subparsers.add_parser("doctor", help="check this machine against a config before a run (memory, "
                                                  "disk, model/data reachable, launch)")
    add_config_arguments(parser, positional=True)
    parser.add_argument("--processes", type=int, default=1, metavar="N",
                        help="processes the run will be launched on (accelerate launch --num_processes; default 1)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="the run folder the run will use (default: runs/<name>-<start time>), for the disk check")
    parser.set_defaults(func=run)


def run(args) -> int:
    from utils.cli.main import check_at_least
    from utils.experiment.doctor import failed, run_checks, table
    from utils.experiment.experiment import Experiment

    check_at_least("--processes", args.processes)
    experiment = Experiment.from_config(args.config, args.overrides, run_dir=args.out)
    rows = run_checks(experiment, args.processes)
    print(table(rows))
    bad = failed(rows)
    if bad:
        print(f"{len(bad)} check(s) failed: {', '.join(row.name for row in bad)}")
        # The table is the report; the contract's one stderr line names what failed, as `prepare` does.
        raise UserError("; ".join(f"{row.name}: {row.detail}" for row in bad))
    return 0
