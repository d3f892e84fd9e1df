"""Files in and out: UTF-8 text, JSON and JSONL read with a one-line error, output locations checked before
any work, and atomic writes (a result or checkpoint is either the old complete file or the new complete one)
that leave what they write with the modes a plain open()/mkdir() would give (0644/0755 under umask 022)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from utils.errors import UserError, unusable_path


def read_utf8_text(path: str | os.PathLike, what: str | None = None) -> str:
    """The whole file as text; a byte that is not UTF-8 is a one-line `UserError` naming its offset.

    Decoded in one piece, so the offset is the byte's position in the file, not in a read buffer. With
    `what` (the kind of file, "config file"), a missing file is the one-line `UserError` "{what} not found".
    """
    path = Path(path)
    if what is not None and not path.is_file():
        raise UserError(f"{what} not found: {path}")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at byte offset {exc.start})") from None


def read_json(path: str | os.PathLike, what: str = "JSON file") -> dict[str, Any]:
    """The JSON object in `path`; a missing file, a byte that is not UTF-8, invalid JSON or a value that is
    not an object is a one-line `UserError` naming the file (`what` says which file it is meant to be)."""
    try:
        data = json.loads(read_utf8_text(path, what))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def read_jsonl(path: str | os.PathLike) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line; a malformed line is a one-line `UserError`.

    Lines are split at line feeds only (a carriage return before one is blank space to JSON), so a U+2028
    inside a string does not split a line, as `str.splitlines` would, and the numbers are an editor's.
    """
    rows = []
    for line_number, line in enumerate(read_utf8_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: line {line_number} is not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}: line {line_number} is not a JSON object")
        rows.append((line_number, row))
    return rows


def is_finite_number(value: Any) -> bool:
    """An int or float (not a bool, which JSON and Python would otherwise let through) that is finite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def looks_like_local_path(name: str, root: Path | None = None) -> bool:
    """Whether a model or tokenizer name means a local folder rather than a hub id (`owner/name`): it starts with
    '.', '/' or '~', names something that exists (relative to `root`, default the current folder), or has more
    than one '/'. The config's paths and the loaders decide it the same way."""
    path = Path(name) if root is None else Path(root) / name
    return name.startswith((".", "/", "~")) or path.exists() or name.count("/") > 1


def check_output_location(path: str | os.PathLike, kind: Literal["folder", "file"]) -> None:
    """Refuse, before anything is loaded, an output `path` that cannot be written as a `kind`.

    A file where a folder is wanted (or the reverse), or a nearest existing parent that is not a writable
    folder, would otherwise fail only after the model was loaded and the work done.
    """
    try:
        check_output_place(Path(path), kind)
    except OSError as exc:  # a name too long, a symlink loop: the file system refuses to look
        raise unusable_path(path, exc) from None


def check_output_place(path: Path, kind: Literal["folder", "file"]) -> None:
    if path.exists():
        if kind == "folder" and not path.is_dir():
            raise UserError(f"output folder {path} exists and is not a folder")
        if kind == "file" and path.is_dir():
            raise UserError(f"output file {path} exists and is a folder")
    ancestor = path if kind == "folder" and path.is_dir() else nearest_existing_parent(path)
    if not ancestor.is_dir():
        raise UserError(f"cannot write the output {kind} {path}: {ancestor} is not a folder")
    if not is_writable_folder(ancestor):
        raise UserError(f"cannot write the output {kind} {path}: the folder {ancestor} is not writable")


def nearest_existing_parent(path: Path) -> Path:
    """The closest ancestor of `path` that exists (the current folder for a bare relative name)."""
    for parent in path.absolute().parents:
        if parent.exists():
            return parent
    return Path(path.absolute().anchor)


def is_writable_folder(folder: Path) -> bool:
    """Whether a file can be created in `folder`: tried, not guessed from mode bits (root ignores them)."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe.", suffix=".tmp")
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def new_temporary(folder: Path, prefix: str, kind: Literal["file", "folder"]) -> Path:
    """A new, empty file or folder under an unused random name `{prefix}XXXXXXXXXXXX.tmp` in `folder`.

    Created the way a plain open() or mkdir() creates one (mode 0o666 or 0o777, less the umask or as a
    default ACL says), not as mkstemp/mkdtemp do (0600/0700): renamed into place, it is the output, and
    teammates sharing the file system must be able to read it. O_EXCL keeps mkstemp's safety: an existing
    name (or a link planted under it) is never opened, a new name is drawn instead.
    """
    for _ in range(100):
        path = folder / f"{prefix}{secrets.token_hex(6)}.tmp"
        try:
            if kind == "folder":
                os.mkdir(path, 0o777)
            else:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"no unused temporary name in {folder} after 100 tries")


def mode_of(path: str | os.PathLike) -> int:
    """The permission bits of `path` itself (a link is not followed)."""
    return stat.S_IMODE(os.lstat(path).st_mode)


def give_modes(root: Path, file_mode: int, folder_mode: int) -> None:
    """Every file and folder under `root` (itself included) gets `file_mode` / `folder_mode` (an executable
    file the folder mode), links left alone. Library writers make files 0600 whatever the umask (safetensors
    0.8 writes through a private temporary file and renames it), which would lock teammates out."""
    paths = [root]
    if root.is_dir() and not root.is_symlink():
        for folder, folders, files in os.walk(root):  # (links to folders are listed, not entered)
            paths += [Path(folder) / name for name in [*folders, *files]]
    for path in paths:
        if path.is_symlink():
            continue  # what a link points to is not ours to change
        current = mode_of(path)
        wanted = folder_mode if path.is_dir() or current & 0o111 else file_mode
        if current != wanted:
            os.chmod(path, wanted)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """`write(tmp)` fills a temporary file beside `path`, which is then synced and renamed over `path`.

    The one temp-file-and-rename of the project: a reader (or a crash) sees the old complete file or the new
    complete one, never a half-written one; on an exception the temporary file is removed. The file gets
    the mode a plain open() gives (see `new_temporary`), so teammates on a shared file system can read it,
    even when `write` replaced the temporary file with one of its own.
    """
    path = Path(path)
    # os.replace would fail on a folder with a bare IsADirectoryError; the user chose the path, so say so.
    if path.is_dir():
        raise UserError(f"output file {path} exists and is a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_temporary(path.parent, f".{path.name}.", "file")
    try:
        plain = mode_of(tmp)
        write(Path(tmp))
        give_modes(tmp, plain, plain)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    """Valid JSON only: a non-finite number is written as null (JSON has no NaN or Infinity)."""
    text = json.dumps(finite_or_null(data), indent=2, sort_keys=False, default=_json_default, allow_nan=False)
    atomic_write_text(path, text + "\n")


def finite_or_null(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(item) for item in value]
    return value


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


class AtomicDirectory:
    """Build a folder under a temporary name and move it into place only when complete.

    `with AtomicDirectory(final) as tmp: save_into(tmp)`: on an exception the old folder (if any)
    is untouched and the partial one is removed. The folder and everything saved into it get the modes a
    plain mkdir() and open() give there (the umask, or a default ACL, decides), measured on the folder and
    a probe file when it is made, so the finished folder is as readable as any the user makes by hand.
    """

    def __init__(self, final: str | os.PathLike):
        self.final = Path(final)

    def __enter__(self) -> Path:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = new_temporary(self.final.parent, f".{self.final.name}.", "folder")
        probe = new_temporary(self.tmp, ".mode-probe.", "file")
        self.modes = (mode_of(probe), mode_of(self.tmp))
        probe.unlink()
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        give_modes(self.tmp, *self.modes)
        old = None
        if self.final.exists():
            old = self.final.with_name(f".{self.final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.final, old)
        os.replace(self.tmp, self.final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file, read in blocks (checkpoints and wheels are large)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
