"""Check that the running environment is the lock: every installed distribution is in the lock at the
locked version, and nothing comes from outside the active virtual environment.

    python scripts/check_lock.py requirements.lock
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

# Installed by `python -m venv` or for the project itself, not by the lock.
NOT_LOCKED = {"pip", "setuptools", "wheel", "lume-unlearning"}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^;\s]+)(\s*;.*)?", line)
        if match:
            pins[normalise(match.group(1))] = match.group(3)
    return pins


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python scripts/check_lock.py LOCKFILE", file=sys.stderr)
        return 2
    pins = read_lock(Path(argv[0]))
    if sys.prefix == sys.base_prefix:
        print("error: not inside a virtual environment", file=sys.stderr)
        return 1
    problems, count = [], 0
    for dist in metadata.distributions():
        name = normalise(dist.metadata["Name"])
        location = Path(dist.locate_file("")).resolve()
        if not str(location).startswith(str(Path(sys.prefix).resolve())) and name != "lume-unlearning":
            problems.append(f"{name} comes from {location}, outside the venv {sys.prefix}")
        if name in NOT_LOCKED:
            continue
        count += 1
        locked = pins.get(name)
        # A local build of the locked release (torch 2.13.0+cpu for 2.13.0) is the same release.
        if locked is None:
            problems.append(f"{name} {dist.version} is installed but not in the lock")
        elif dist.version.split("+")[0] != locked.split("+")[0]:
            problems.append(f"{name} {dist.version} is installed, the lock says {locked}")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if not problems:
        print(f"[lock] {count} installed distributions, each at its locked version, all inside {sys.prefix}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
