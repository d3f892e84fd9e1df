"""Plain aligned text tables for the terminal (no dependency): data counts, scores, leaderboards, sweeps."""

from __future__ import annotations

import re


def format_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """Columns left-aligned, numbers right-aligned, floats to 4 decimals, None as an empty cell."""
    if not rows:
        return "(empty)"
    columns = columns or list(rows[0])
    cells = [[_cell_text(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    rule = "  ".join("-" * w for w in widths)
    body = ["  ".join(v.rjust(w) if _looks_numeric(v) else v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join([line, rule, *body])


def _cell_text(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


def _looks_numeric(text: str) -> bool:
    """Whether a cell's text reads as a number (it is then right-aligned)."""
    return bool(re.fullmatch(r"-?[0-9.]+(e-?[0-9]+)?", text))
