"""`unlearn data DIR [--split]`: validate a LUME folder and print its counts."""

from __future__ import annotations

from utils.data.lume import find_mia_dir, incomplete_mia_folder, load_lume, load_mia_documents, summary_rows
from utils.evaluation.tables import format_table


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="validate a LUME data folder and print rows per split/task/kind")
    parser.add_argument("directory", help="folder in any official layout")
    parser.add_argument("--split", choices=["train", "validation"], default="validation")
    parser.set_defaults(func=run)


def run(args) -> int:
    data = load_lume(args.directory, args.split)
    print(f"LUME data in {args.directory} ({args.split})")
    print(format_table(summary_rows(data)))
    mia_dir = find_mia_dir(args.directory, args.split)
    if mia_dir is not None:
        documents = load_mia_documents(mia_dir)
        print(f"MIA documents in {mia_dir}: {len(documents['member'])} members, "
              f"{len(documents['nonmember'])} non-members")
    missing = incomplete_mia_folder(args.directory, args.split)
    if missing:
        print(f"warning: {missing}")
    return 0
