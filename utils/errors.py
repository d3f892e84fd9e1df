"""The one exception type that means "the user gave us something wrong".

The CLI turns it into a single line on stderr and exit code 2; everything else is a bug and keeps
its traceback.
"""


class UserError(Exception):
    """Bad input (config, data file, model folder): the message names the problem."""


def unusable_path(path, exc: BaseException) -> UserError:
    """The one-line error for a path the file system refuses to resolve or look at (a name too long, a symlink
    loop, no permission): `cannot use <path>: <reason>`. Python 3.11's Path.resolve reports a loop as a
    RuntimeError without an errno, hence the fallback text."""
    reason = getattr(exc, "strerror", None) or ("a symlink loop" if isinstance(exc, RuntimeError) else str(exc))
    return UserError(f"cannot use {path}: {reason}")
