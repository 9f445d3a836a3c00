"""Counts in words: "1 server", "2 servers", never "server(s)"."""

from __future__ import annotations


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and ``noun``, the noun plural unless ``n`` is 1 (``plural`` where not noun + "s")."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
