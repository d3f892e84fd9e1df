"""The `unlearn` command: one sub-command per module in `utils/cli/commands/`.

Each command module exposes `register(subparsers)`, which adds its parser and sets `func`.
A `UserError` anywhere ends the program with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import importlib.metadata
import signal
import sys
import threading
import tomllib
import typing

from utils.errors import UserError, unusable_path
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
]


# A path the file system refuses (too long, a symlink loop, no permission, full, read-only) that a command's own
# checks missed still ends in one line naming it; every other OSError (a missing file we made) is a bug.
REFUSED_BY_FILE_SYSTEM = frozenset({errno.ENAMETOOLONG, errno.ELOOP, errno.EACCES, errno.EPERM, errno.ENOSPC,
                                    errno.EROFS, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR})


class OneLineParser(argparse.ArgumentParser):
    """A usage mistake ends like any other bad input: one `error:` line and exit code 2 (no usage block)."""

    def error(self, message: str) -> typing.NoReturn:
        raise UserError(f"{self.prog}: {message} (see {self.prog} --help)")


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


@contextlib.contextmanager
def library_progress_bars(enabled: bool):
    """`--quiet` also silences the bars transformers draws on stderr while loading and saving weights."""
    if enabled:
        yield
        return
    from transformers.utils import logging as transformers_logging

    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()


def check_at_least(flag: str, value: float | None, low: int = 1) -> None:
    """A numeric flag below `low` is refused before anything loads (unset, None, is left to the config)."""
    if value is not None and value < low:
        raise UserError(f"{flag} must be at least {low}, got {value}")


class Stopped(KeyboardInterrupt):
    """SIGTERM (a scheduler's stop, `kill`): unwinds like Ctrl-C, so every `finally` and atomic write cleans up."""


def stop_on_signal(signum, _frame) -> None:
    # A second signal must not cut the cleanup the first one started.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise Stopped(signal.Signals(signum).name) if signum != signal.SIGINT else KeyboardInterrupt()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    handlers = None
    if threading.current_thread() is threading.main_thread():
        handlers = {sig: signal.signal(sig, stop_on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        args = parser.parse_args(argv)
        with library_progress_bars(not getattr(args, "quiet", False)):
            result = args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.filename is None or exc.errno not in REFUSED_BY_FILE_SYSTEM:
            raise  # anything else is a bug and keeps its traceback
        print(f"error: {unusable_path(exc.filename, exc)}", file=sys.stderr)
        return 2
    except Stopped as exc:
        print(f"stopped by {exc}: temporaries removed, nothing half-written left", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("interrupted: temporaries removed, nothing half-written left", file=sys.stderr)
        return 130
    finally:
        for sig, handler in (handlers or {}).items():
            signal.signal(sig, handler)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
