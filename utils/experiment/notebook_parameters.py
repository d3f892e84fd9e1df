"""A notebook's parameters read into their types, whoever set them.

`papermill -r NAME VALUE` and a scheduled notebook job (SageMaker Studio, ...) pass every parameter as a
string, so the notebooks run these right after their parameters cell: `"2"` becomes 2, `"false"` False,
and `overrides` may be a list, a JSON list (`'["a=b", "c=d"]'`) or one string split as a shell would
(`"a=b c='d e'"`). A value that means nothing is a one-line UserError naming the parameter.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from utils.errors import UserError

TRUE = {"true", "yes", "on", "1"}
FALSE = {"false", "no", "off", "0"}


def as_bool(name: str, value) -> bool:
    """A bool, 0/1, or a string such as "True", "false", "yes", "0" (any case)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE | FALSE:
        return value.strip().lower() in TRUE
    raise UserError(f"notebook parameter {name}: expected true or false, got {value!r}")


def as_count(name: str, value, minimum: int = 1) -> int:
    """A whole number of at least `minimum`, given as a number or a string of digits ("2")."""
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        number = int(value.strip())
    if number is None or number < minimum:
        raise UserError(f"notebook parameter {name}: expected a whole number >= {minimum}, got {value!r}")
    return number


def as_overrides(name: str, value) -> list[str]:
    """`key=value` config overrides from a list, a JSON list string, or a shell-like string ("" = none)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith(("[", "{")):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as error:
                raise UserError(f"notebook parameter {name}: not a valid JSON list ({error.msg} at "
                                f"character {error.pos}): {text!r}") from None
        else:
            try:
                value = shlex.split(text)
            except ValueError as error:  # an unclosed quote
                raise UserError(f"notebook parameter {name}: {error} in {text!r}") from None
    if not isinstance(value, (list, tuple)):
        raise UserError(f"notebook parameter {name}: expected key=value overrides (a list, a JSON list or "
                        f"'a=b c=d'), got {value!r}")
    for item in value:
        if not isinstance(item, str) or "=" not in item or item.startswith("="):
            raise UserError(f"notebook parameter {name}: each override is key=value, got {item!r}")
    return list(value)


def as_optional_text(name: str, value) -> str | None:
    """A string, or None for None, "", "None" or "null" (a scheduled job cannot pass None itself)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in {"", "none", "null"}):
        return None
    if not isinstance(value, (str, Path)):
        raise UserError(f"notebook parameter {name}: expected a path or None, got {value!r}")
    return str(value)
