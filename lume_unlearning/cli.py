"""`unlearn`: check that `utils` and `methods` are this project's, then run `utils.cli.main.main`."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

LIBRARY_PACKAGES = ("utils", "methods")


def shadowing_problem() -> str | None:
    """A one-line description of a `utils`/`methods` found elsewhere than beside this package, or None."""
    home = Path(__file__).resolve().parents[1]
    for name in LIBRARY_PACKAGES:
        expected = home / name / "__init__.py"
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        origin = Path(spec.origin).resolve() if spec is not None and spec.origin else None
        if origin != expected:
            found = origin or (spec.submodule_search_locations[0] if spec and spec.submodule_search_locations
                               else "nowhere")
            return (f"the module '{name}' on the path is {found}, not this project's {expected.parent}: another "
                    f"'{name}' shadows it (check PYTHONPATH and the working directory)")
    return None


def main(argv: list[str] | None = None) -> int:
    problem = shadowing_problem()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from utils.cli.main import main as library_main
    from utils.entry import ignore_late_stops

    code = library_main(argv)
    ignore_late_stops()
    return code
