"""Output folders: never one of the command's own inputs, one writer at a time, emptied by `--overwrite` only
when this project made them, and no temporaries left behind.

  check_not_input(out, inputs)   an output that is, holds or lies inside an input is a one-line UserError
  folder_lock(out, made_by)      `<out>/.lock` held (flock) while a process writes `out`; a second writer is
                                 refused naming the holder, the lock of a dead one is taken over with a warning;
                                 leftover temporaries of a killed writer are removed when the lock is taken
  check_overwrite / clear_folder `--overwrite` empties a folder only when it holds MARKER (or is recognisably
                                 a run, evaluation, merge, sweep or work folder of this project)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from utils.errors import UserError, unusable_path

MARKER = ".lume-unlearning"
LOCK = ".lock"
# The names `utils.io.new_temporary` draws (atomic writes and AtomicDirectory) and the write probe's.
TEMPORARY = re.compile(r"^\..+\.[0-9a-z_]{6,}\.tmp$")
# The deepest a temporary of this project's writers sits below the folder locked (run/checkpoints/after-N/...).
MAX_DEPTH = 3
# Files that tell a folder without MARKER as this project's own (see `made_by_project`).
OWN_FILES = (("config.yaml", "log.jsonl"), ("merge.json",), ("prepare_report.json",), ("run_summary.csv",),
             ("data", "target"))


def real(path: str | os.PathLike) -> Path:
    """The path with `~`, `..` and every symlink resolved (what the file system would really write); a symlink
    loop or a name the file system refuses is a one-line UserError."""
    try:
        return Path(path).expanduser().resolve()
    except (OSError, RuntimeError) as exc:
        raise unusable_path(path, exc) from None


def check_not_input(out: str | os.PathLike,
                    inputs: Mapping[str, str | os.PathLike | None] | Iterable[tuple[str, str | os.PathLike | None]],
                    flag: str = "--out", allow_holding: bool = False) -> None:
    """Refuse an output `out` that is, holds or lies inside one of `inputs` ({what it is: path}); inputs that
    are not local paths (a hub name, None) are skipped. `allow_holding`: an output that only adds named files
    (a leaderboard) may hold its inputs."""
    target = real(out)
    for what, path in inputs.items() if isinstance(inputs, Mapping) else inputs:
        if path is None or not str(path):
            continue
        try:
            if not Path(str(path)).expanduser().exists():
                continue
        except OSError as exc:
            raise unusable_path(path, exc) from None
        source = real(path)
        if target == source:
            problem = f"is the {what} ({path})"
        elif target.is_relative_to(source):
            problem = f"lies inside the {what} ({path})"
        elif source.is_relative_to(target) and not allow_holding:
            problem = f"holds the {what} ({path})"
        else:
            continue
        raise UserError(f"{flag} {out} {problem}: a command never writes its inputs; choose another {flag}")


def utility_file(spec: str | None) -> str | None:
    """The local file or folder of a utility spec (synthetic:FILE, mmlu:DIR), None for a hub one or none."""
    if not spec or ":" not in spec:
        return None
    target = spec.partition(":")[2]
    return None if target.startswith("hf:") else target


def experiment_inputs(experiment, model: str | None = None) -> dict[str, str | None]:
    """Everything a run or an evaluation of `experiment` reads: {what: path}."""
    config = experiment.config
    tiny_tokenizer = config.model.tiny.tokenizer
    try:
        utility = utility_file(experiment.utility)
    except UserError:
        utility = None  # a missing utility file is reported by the command's own check
    return {
        "model": model if model is not None else experiment.start_model,
        "tokenizer": config.model.tokenizer,
        "gold standard (model.gold_standard)": config.model.gold_standard,
        "data folder": str(experiment.data_dir),
        "MIA folder": None if config.data.mia_path in (None, "none") else config.data.mia_path,
        "utility data": utility,
        "tokenizer (model.tiny.tokenizer)": None if tiny_tokenizer in (None, "olmo") else tiny_tokenizer,
        "config file": None if experiment.source is None else str(experiment.source),
    }


# ------------------------------------------------------------------------------------------------
# Whose folder it is


def made_by_project(folder: Path) -> bool:
    """Whether `folder` is this project's: it holds MARKER, or, without one, the files a run (config.yaml +
    log.jsonl), a merge, a sweep or a work folder of `unlearn prepare` leave, or a results.json of an
    evaluation (with its final_score). An empty folder counts: nothing is lost."""
    if (folder / MARKER).is_file() or not any(entry.name != LOCK for entry in folder.iterdir()):
        return True
    if any(all((folder / name).exists() for name in names) for names in OWN_FILES):
        return True
    try:
        results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(results, dict) and "final_score" in results


def check_overwrite(folder: str | os.PathLike) -> None:
    """`--overwrite` empties only a folder this project made; anything else is refused in one line."""
    folder = Path(folder)
    if folder.is_dir() and not made_by_project(folder):
        raise UserError(f"--overwrite: {folder} was not made by this project (no {MARKER} in it), so it is left "
                        "alone; empty it yourself or choose another --out")


def clear_folder(folder: Path) -> None:
    """Everything in `folder` but its lock and marker (the lock held now must stay the one others see)."""
    for entry in folder.iterdir():
        if entry.name in (LOCK, MARKER):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def mark(folder: Path, made_by: str) -> None:
    from utils.io import atomic_write_json

    if not (folder / MARKER).exists():
        atomic_write_json(folder / MARKER, {"made_by": made_by, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


# ------------------------------------------------------------------------------------------------
# Temporaries


def remove_temporaries(folder: Path) -> list[Path]:
    """Remove what a killed writer left in `folder` (not descending into a folder with a lock of its own):
    atomic-write temporaries, and a `.X.old` that AtomicDirectory set aside (put back where X is missing,
    since a kill between its two renames leaves only that copy)."""
    removed: list[Path] = []
    if not made_by_project(folder):
        return removed  # a folder of the user's own: its files are not ours to judge
    for parent, folders, files in os.walk(folder):
        here = Path(parent)
        if here != folder and (here / LOCK).exists() or len(here.relative_to(folder).parts) >= MAX_DEPTH:
            folders.clear()
            continue
        for name in [*folders, *files]:
            path = here / name
            if TEMPORARY.match(name):
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() and not path.is_symlink() else \
                    path.unlink(missing_ok=True)
                removed.append(path)
            elif name.startswith(".") and name.endswith(".old") and path.is_dir() and name != ".old":
                original = here / name[1:-len(".old")]
                if original.exists():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.replace(path, original)
                removed.append(path)
        folders[:] = [name for name in folders if (here / name).is_dir() and not TEMPORARY.match(name)
                      and not name.endswith(".old")]
    return removed


# ------------------------------------------------------------------------------------------------
# One writer per folder

_held: dict[Path, list] = {}  # real path -> [fd, depth]: a process that already holds a lock takes it again


def is_main_process() -> bool:
    """Whether this process writes for its job: alone, or rank 0 of a launcher's processes (RANK, else LOCAL_RANK)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return True
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0


def describe_holder(text: str) -> str:
    try:
        holder = json.loads(text)
        return f"pid {holder['pid']} on {holder['host']} since {holder['since']}"
    except (ValueError, KeyError, TypeError):
        return "another process"


def process_start(pid: int) -> str | None:
    """The start time of process `pid` in clock ticks since boot (/proc), None where it cannot be read."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def holder_running(holder: dict) -> bool:
    """Whether the process a lock names still runs on this host (the same pid and start time)."""
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int) or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    started = process_start(pid)
    return started is None or holder.get("start") in (None, started)


def _acquire(folder: Path) -> int:
    path = folder / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode("utf-8", "replace")
            os.close(fd)
            raise UserError(f"{folder} is being written by another process ({describe_holder(holder)}); wait for "
                            "it to finish or choose another --out") from None
        except OSError:
            return fd  # a file system without flock: the holder's pid and start time decide (folder_lock)
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:  # (else its holder removed the file as we opened it: lock the new one)
            return fd
        os.close(fd)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, made_by: str, main: bool | None = None, log=None) -> Iterator[Path]:
    """Hold `<folder>/.lock` while writing `folder` (made if missing, with MARKER when new or empty). Only
    the main process of a launched job takes it (`main`, default from the launcher's RANK): the job's other
    processes write through it. A folder this call made and nothing was written into is removed again."""
    folder = Path(folder)
    if not (is_main_process() if main is None else main):
        yield folder
        return
    key = real(folder)
    if key in _held:
        _held[key][1] += 1
        try:
            yield folder
        finally:
            _held[key][1] -= 1
        return
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    fd = _acquire(folder)
    try:
        previous = os.read(fd, 4096).decode("utf-8", "replace").strip()
        if previous:
            try:
                holder = json.loads(previous)
            except ValueError:
                holder = {}
            if isinstance(holder, dict) and holder_running(holder):
                # Where flock is not enforced (some network file systems), the pid still says who holds it.
                raise UserError(f"{folder} is being written by another process ({describe_holder(previous)}); "
                                "wait for it to finish or choose another --out")
            (log or _warn)(f"warning: {folder}: taking over the lock of {describe_holder(previous)}, which is no "
                           "longer running")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                  "start": process_start(os.getpid()), "made_by": made_by}).encode(), 0)
        remove_temporaries(folder)
        marked = not (folder / MARKER).exists() and not any(entry.name != LOCK for entry in folder.iterdir())
        if marked:
            mark(folder, made_by)
    except BaseException:
        _release(folder, fd, made, False)
        raise
    _held[key] = [fd, 0]
    try:
        yield folder
    finally:
        del _held[key]
        _release(folder, fd, made, marked)


def _release(folder: Path, fd: int, made: bool, marked: bool) -> None:
    # Removed while still locked: a process that opened the file meanwhile finds it gone and retries.
    with contextlib.suppress(FileNotFoundError):
        (folder / LOCK).unlink()
    os.close(fd)
    # A command refused or stopped before it wrote anything leaves the folder as it found it.
    if marked and folder.is_dir() and {entry.name for entry in folder.iterdir()} == {MARKER}:
        (folder / MARKER).unlink()
    if made and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def _warn(message: str) -> None:
    print(message, file=sys.stderr)
