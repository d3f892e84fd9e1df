"""`unlearn data [DIR] [--split] [--config F] [--set k=v]`: validate a LUME folder and print its counts.

Without DIR it checks the data a config points at (`data.path`, `data.split`, `data.mia_path`), resolved
the way `unlearn run` and `unlearn evaluate` resolve them, so a config's data can be checked before a run.
"""

from __future__ import annotations

from pathlib import Path

from utils.cli.main import add_config_arguments
from utils.config import replace_keys
from utils.errors import UserError
from utils.evaluation.tables import format_table


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="validate a LUME data folder and print rows per split/task/kind")
    parser.add_argument("directory", nargs="?", default=None,
                        help="folder in any official layout (default: config data.path, else the mini-LUME "
                             "`unlearn prepare` builds in <workdir>/data)")
    parser.add_argument("--split", choices=["train", "validation"], default=None,
                        help="the split to read (default: config data.split, validation)")
    add_config_arguments(parser, config_help="YAML config file whose data.path, data.split and data.mia_path "
                                             "are checked (default: the embedded default)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from utils.data.lume import summary_rows
    from utils.experiment.experiment import Experiment

    experiment = Experiment.from_config(args.config, args.overrides)
    experiment = experiment.with_config(replace_keys(experiment.config,
                                                     {"data.path": args.directory, "data.split": args.split}))
    if experiment.config.data.path is None and not Path(experiment.data_dir).exists():
        raise UserError(f"no data folder given and no mini-LUME in {experiment.data_dir}: name one (unlearn data "
                        f"DIR, or --set data.path=DIR) or build the mini-LUME with `unlearn prepare`")
    data = experiment.lume()
    print(f"LUME data in {experiment.data_dir} ({experiment.split})")
    print(format_table(summary_rows(data)))
    mia_dir, documents, missing = experiment.mia()
    if documents is not None:
        print(f"MIA documents in {mia_dir}: {len(documents['member'])} members, "
              f"{len(documents['nonmember'])} non-members")
    if missing:
        print(f"warning: {missing}")
    return 0
