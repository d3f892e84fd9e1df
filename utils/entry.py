"""What every entry point of the project does around its work (`unlearn` and the library's child processes,
`python -m utils.experiment.child`): one-line errors with exit code 2, a stop signal that unwinds like Ctrl-C,
`--quiet` silencing the libraries' progress bars too, and no stop signal after the work has finished; and the
command line that starts such a child.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import sys
import threading
import typing
from collections.abc import Callable

from utils.errors import UserError, unusable_path
from utils.project import PROJECT_ROOT

# A path the file system refuses (too long, a symlink loop, no permission, full, read-only) that a command's own
# checks missed still ends in one line naming it; every other OSError (a missing file we made) is a bug.
REFUSED_BY_FILE_SYSTEM = frozenset({errno.ENAMETOOLONG, errno.ELOOP, errno.EACCES, errno.EPERM, errno.ENOSPC,
                                    errno.EROFS, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR})


class OneLineParser(argparse.ArgumentParser):
    """A usage mistake ends like any other bad input: one `error:` line and exit code 2 (no usage block)."""

    def error(self, message: str) -> typing.NoReturn:
        raise UserError(f"{self.prog}: {message} (see {self.prog} --help)")


class Stopped(KeyboardInterrupt):
    """SIGTERM (a scheduler's stop, `kill`): unwinds like Ctrl-C, so every `finally` and atomic write cleans up."""


def stop_on_signal(signum, _frame) -> None:
    # A second signal must not cut the cleanup the first one started.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise Stopped(signal.Signals(signum).name) if signum != signal.SIGINT else KeyboardInterrupt()


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


def run_command(work: Callable[[], int | None]) -> int:
    """Run `work` as a command: its exit code, or 2 after one `error:` line for bad input (a UserError, a path
    the file system refuses), 143 after SIGTERM and 130 after Ctrl-C, temporaries cleaned up on the way out."""
    handlers = None
    if threading.current_thread() is threading.main_thread():
        handlers = {sig: signal.signal(sig, stop_on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        result = work()
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


def ignore_late_stops() -> None:
    """After the work has finished and written everything, a stop signal during the interpreter's exit (a second
    or so of library teardown) would only kill the process silently with another exit code: ignore it."""
    if threading.current_thread() is threading.main_thread():
        for stop in (signal.SIGTERM, signal.SIGINT):
            signal.signal(stop, signal.SIG_IGN)


def child_command(module: str, *arguments: str) -> list[str]:
    """The command line that runs `python -m module arguments...` in a fresh interpreter of this one (-P: the
    working folder is not put on the path; `child_environment` puts the project there)."""
    return [sys.executable, "-P", "-m", module, *arguments]


def child_environment(base: typing.Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (default this process's environment) with the project's root first on PYTHONPATH, so the child
    imports this checkout's `utils` and `methods` whatever its working folder holds."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env
