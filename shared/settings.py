"""Reading settings, as both the broker's and the agent's config do it.

Each side keeps its own frozen ``Config`` dataclass (fields with ``help`` and optional
``min``, ``max``, ``choices``, ``octal`` metadata) and its own words for errors; the
reading is here: a TOML file's table (``file_settings``), ``TENURE_*`` variables
(``env_settings``) and one value's conversion and checks (``setting_value``). Values
come from TOML (already typed) or from the environment and flags (strings);
``parse_value`` turns either into the setting's declared type and raises
``ValueError`` for anything else, so that each config can name the setting in its
own words. Precedence (flags > environment > file > default) is each loader's order
of applying them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
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
    return _parser(kind)(raw)


def _parse_int(raw: Any) -> int:
    if not isinstance(raw, (int, str)):
        raise ValueError("not a whole number")
    return int(raw)


def _parse_float(raw: Any) -> float:
    if not isinstance(raw, (int, float, str)):
        raise ValueError("not a number")
    value = float(raw)
    if not math.isfinite(value):  # nan would slip through every range check
        raise ValueError("not a finite number")
    return value


def _parse_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if str(raw).lower() in _TRUE:
        return True
    if str(raw).lower() in _FALSE:
        return False
    raise ValueError("not true or false")


def _parse_path(raw: Any) -> Path:
    if not isinstance(raw, (str, Path)) or str(raw) == "":
        raise ValueError("not a path")
    return Path(raw)


def _parse_text(raw: Any) -> str:
    if not isinstance(raw, str):
        raise ValueError("not text")
    return raw


# A field's type as text ("int", "float | None"...) starts with its kind; "Path | None"
# and "str" are matched in _parser.
_BY_PREFIX: tuple[tuple[str, Callable[[Any], Any]], ...] = (
    ("int", _parse_int),
    ("float", _parse_float),
    ("bool", _parse_bool),
)


def _parser(kind: str) -> Callable[[Any], Any]:
    for prefix, parser in _BY_PREFIX:
        if kind.startswith(prefix):
            return parser
    return _parse_path if "Path" in kind else _parse_text


class SettingProblem(ValueError):
    """A value that does not fit its setting; each config words the message its own way."""


class OutOfRange(SettingProblem):
    def __init__(self, value: Any, low: Any, high: Any) -> None:
        super().__init__(f"{value!r} is outside {low}..{high}")
        self.value, self.low, self.high = value, low, high


class NotAChoice(SettingProblem):
    def __init__(self, value: Any, choices: Sequence[str]) -> None:
        super().__init__(f"{value!r} is not one of {', '.join(choices)}")
        self.value, self.choices = value, tuple(choices)


class NotATable(SettingProblem):
    """The file's ``[section]`` is a value, not a table."""


class UnknownSetting(SettingProblem):
    def __init__(self, name: str) -> None:
        super().__init__(f"unknown setting '{name}'")
        self.name = name


def setting_value(f: dataclasses.Field[Any], raw: Any) -> Any:
    """``raw`` as the value of setting ``f``, checked against its ``min``/``max``/``choices``.

    Raises ``ValueError`` when ``raw`` is not of the setting's type, ``OutOfRange`` or
    ``NotAChoice`` when it is but does not fit.
    """
    value = parse_value(str(f.type), raw, octal=bool(f.metadata.get("octal")))
    if value is None:
        return None
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
        raise NotAChoice(value, choices)
    low, high = f.metadata.get("min"), f.metadata.get("max")
    if (low is not None and value < low) or (high is not None and value > high):
        raise OutOfRange(value, low, high)
    return value


def file_settings(path: Path, section: str, known: Collection[str]) -> dict[str, Any]:
    """The raw settings of TOML file ``path``: its ``[section]`` table, else its top level.

    Raises ``OSError`` (unreadable), ``tomllib.TOMLDecodeError``, ``NotATable`` or
    ``UnknownSetting`` (a key that is no setting).
    """
    import tomllib  # imported when a file is read: a service can let it go afterwards

    with path.open("rb") as handle:
        data = tomllib.load(handle)
    table = data.get(section, data)
    if not isinstance(table, dict):
        raise NotATable(section)
    for key in table:
        if key not in known:
            raise UnknownSetting(key)
    return dict(table)


def env_settings(env: Mapping[str, str], prefix: str, known: Iterable[str]) -> dict[str, tuple[str, str]]:
    """Each setting given in ``env`` as ``PREFIX`` + its name in capitals: name → (variable, text)."""
    found = {}
    for name in known:
        var = prefix + name.upper()
        if var in env:
            found[name] = (var, env[var])
    return found
