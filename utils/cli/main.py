"""The `unlearn` command: one sub-command per module in `utils/cli/commands/`.

Each command module exposes `register(subparsers)`, which adds its parser and sets `func`.
A `UserError` anywhere ends the program with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys
import tomllib

from utils.entry import OneLineParser, library_progress_bars, run_command
from utils.errors import UserError
from utils.project import PROJECT_ROOT

# The name pyproject.toml gives the project ([project] name): what `pip install -e .` registers.
DISTRIBUTION = "lume-unlearning"

COMMAND_MODULES = [
    "utils.cli.commands.data",
    "utils.cli.commands.prepare",
    "utils.cli.commands.score",
    "utils.cli.commands.evaluate",
    "utils.cli.commands.run",
    "utils.cli.commands.quickstart",
    "utils.cli.commands.leaderboard",
    "utils.cli.commands.sweep",
    "utils.cli.commands.merge",
    "utils.cli.commands.doctor",
    "utils.cli.commands.reproduce",
]


def package_version() -> str:
    """The installed distribution's version; from a checkout that is not installed, its pyproject.toml's version
    (said so); else "unknown"."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        pass
    pyproject = PROJECT_ROOT / "pyproject.toml"
    try:
        version = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["version"]
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, KeyError, TypeError):
        return f"unknown ({DISTRIBUTION} is not installed)"
    return f"{version} (the checkout at {PROJECT_ROOT}; {DISTRIBUTION} is not installed)"


def build_parser() -> argparse.ArgumentParser:
    # Raw text: the version line (which names the checkout's path) is printed whole, never wrapped to the terminal.
    parser = OneLineParser(
        prog="unlearn", description="Parameter-efficient unlearning of LLMs on the SemEval-2025 Task 4 benchmark.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}",
                        help="print the version of the installed project and exit")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def add_config_arguments(
        parser: argparse.ArgumentParser, positional: bool = False,
        config_help: str = "YAML config file (default: the embedded default)",
        set_help: str = "override any config key, e.g. --set training.learning_rate=1e-5 (repeatable)") -> None:
    """The config file and `--set key=value` overrides of every command that a config key affects (all but
    `leaderboard`); `config_help` and `set_help` say what they are to this command."""
    if positional:
        parser.add_argument("config", help="YAML config file")
    else:
        parser.add_argument("--config", default=None, metavar="FILE", help=config_help)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=set_help)


def add_run_folder_flags(parser: argparse.ArgumentParser, no_eval_help: str) -> None:
    """The flags of the commands that write a run folder (`run`, `merge`): skip the evaluation, replace what
    the folder holds, no progress bars."""
    parser.add_argument("--no-eval", action="store_true", help=no_eval_help)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace whatever run the --out folder holds, finished or not (says what it replaces)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def check_at_least(flag: str, value: float | None, low: int = 1) -> None:
    """A numeric flag below `low` is refused before anything loads (unset, None, is left to the config)."""
    if value is not None and value < low:
        raise UserError(f"{flag} must be at least {low}, got {value}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()

    def work() -> int | None:
        args = parser.parse_args(argv)
        with library_progress_bars(not getattr(args, "quiet", False)):
            return args.func(args)

    return run_command(work)


if __name__ == "__main__":
    sys.exit(main())
