"""`unlearn data [DIR] [--split] [--config F] [--set k=v]`: validate a LUME folder and print its counts.
`unlearn data download [--to DIR] [--repo ORG/NAME] [--revision R]`: fetch the official files from the hub.

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
                        help="folder in any official layout, or hf:ORG/NAME (default: config data.path, else the "
                             "mini-LUME `unlearn prepare` builds in <workdir>/data); `download` fetches the "
                             "official files instead (a folder named download: ./download)")
    parser.add_argument("--split", choices=["train", "validation"], default=None,
                        help="the split to read (default: config data.split, validation)")
    parser.add_argument("--to", default="semeval25-unlearning-data", metavar="DIR",
                        help="with download: the new folder to download into (default: semeval25-unlearning-data)")
    parser.add_argument("--repo", default=None, metavar="ORG/NAME",
                        help="with download: the hub dataset (default: the organisers' public repository)")
    parser.add_argument("--revision", default=None, help="with download: a branch, tag or commit of it")
    add_config_arguments(parser, config_help="YAML config file whose data.path, data.split and data.mia_path "
                                             "are checked (default: the embedded default)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from utils.data.lume import summary_rows
    from utils.experiment.experiment import Experiment

    if args.directory == "download":
        return download(args)

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


def download(args) -> int:
    from utils.data.hub import OFFICIAL_DATASET, download_lume
    from utils.data.lume import find_split_files

    repo = args.repo or OFFICIAL_DATASET
    folder = download_lume(repo, args.to, args.revision)
    splits = []
    for split in ("train", "validation"):
        try:
            find_split_files(folder, split)
            splits.append(split)
        except UserError:
            continue
    if not splits:
        raise UserError(f"{repo} was downloaded into {folder} but holds no LUME split files")
    print(f"downloaded {repo} into {folder}: splits {', '.join(splits)}; check them with `unlearn data {folder} "
          f"--split {splits[0]}`")
    return 0
