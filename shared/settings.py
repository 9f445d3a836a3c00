"""Reading one setting's value, as both the broker's and the agent's config do it.

Values come from TOML (already typed) or from the environment and flags (strings);
``parse_value`` turns either into the setting's declared type and raises
``ValueError`` for anything else, so that each config can name the setting in its
own words.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_value(kind: str, raw: Any, *, octal: bool = False) -> Any:
    """``raw`` as a value of ``kind`` (the dataclass field's type, as text)."""
    if raw is None:
        return None
    if isinstance(raw, bool) and not kind.startswith("bool"):
        raise ValueError("a boolean where another type was expected")
    if octal:
        return int(raw, 8) if isinstance(raw, str) else int(raw)
    if kind.startswith("int"):
        if not isinstance(raw, (int, str)):
            raise ValueError("not a whole number")
        return int(raw)
    if kind.startswith("float"):
        if not isinstance(raw, (int, float, str)):
            raise ValueError("not a number")
        value = float(raw)
        if not math.isfinite(value):  # nan would slip through every range check
            raise ValueError("not a finite number")
        return value
    if kind.startswith("bool"):
        if isinstance(raw, bool):
            return raw
        if str(raw).lower() in _TRUE:
            return True
        if str(raw).lower() in _FALSE:
            return False
        raise ValueError("not true or false")
    if "Path" in kind:
        if not isinstance(raw, (str, Path)) or str(raw) == "":
            raise ValueError("not a path")
        return Path(raw)
    if not isinstance(raw, str):
        raise ValueError("not text")
    return raw
