"""Files in and out: UTF-8 text, JSON and JSONL read with a one-line error, output locations checked before
any work, and atomic writes (a result or checkpoint is either the old complete file or the new complete one)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from utils.errors import UserError


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


def check_output_location(path: str | os.PathLike, kind: Literal["folder", "file"]) -> None:
    """Refuse, before anything is loaded, an output `path` that cannot be written as a `kind`.

    A file where a folder is wanted (or the reverse), or a nearest existing parent that is not a writable
    folder, would otherwise fail only after the model was loaded and the work done.
    """
    path = Path(path)
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


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """`write(tmp)` fills a temporary file beside `path`, which is then synced and renamed over `path`.

    The one temp-file-and-rename of the project: a reader (or a crash) sees the old complete file or the new
    complete one, never a half-written one; on an exception the temporary file is removed.
    """
    path = Path(path)
    # os.replace would fail on a folder with a bare IsADirectoryError; the user chose the path, so say so.
    if path.is_dir():
        raise UserError(f"output file {path} exists and is a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
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
    is untouched and the partial one is removed.
    """

    def __init__(self, final: str | os.PathLike):
        self.final = Path(final)

    def __enter__(self) -> Path:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(dir=self.final.parent, prefix=f".{self.final.name}.", suffix=".tmp"))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
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
