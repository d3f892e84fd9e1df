"""Where the project's own files are: the checkout's `configs/` and `notebooks/` beside the packages.

The configs and notebooks are files of the checkout, not package data, so the supported install is an
editable one from a clone (`pip install -e .`); a plain `pip install .` copies only the packages, and
every command that needs the checkout then stops with one line saying so.
"""

from __future__ import annotations

from pathlib import Path

from utils.errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def checkout_folder(name: str) -> Path:
    """A top-level folder of the project's checkout (`configs`, `notebooks`, ...), or a UserError."""
    folder = PROJECT_ROOT / name
    if not folder.is_dir():
        raise UserError(f"the project's {name}/ folder is not beside its packages ({PROJECT_ROOT}): install the "
                        f"project from a clone with `pip install -e .` (a non-editable install does not carry "
                        f"{name}/)")
    return folder


def config_dir() -> Path:
    return checkout_folder("configs")


def project_path(path: str | Path) -> Path:
    """`path` itself when absolute, else the same path under the project root: a notebook's parameters
    name project files the same way whichever folder the notebook runs in."""
    return Path(path) if Path(path).is_absolute() else PROJECT_ROOT / path
