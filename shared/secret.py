"""A secret string that does not show itself (starlette's ``Secret``)."""

from __future__ import annotations


class Secret:
    """A string that never shows itself in ``repr`` or ``str``; ``reveal()`` to use it.

    Tokens travel in this wrapper so that a log line, a traceback's locals or a dataclass
    ``repr`` cannot print them by accident.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)
