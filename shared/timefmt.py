"""RFC 3339 timestamps as the API speaks them: UTC, whole seconds, a trailing ``Z``."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache


def format_ts(epoch: float) -> str:
    """Render epoch seconds as ``2026-11-29T22:34:06Z`` (fractions are dropped)."""
    return _format(int(epoch))


# A lease answer renders four or more instants, and a busy broker renders the same few
# seconds (now, now + lifetime, a purchase's expiry) thousands of times each.
@lru_cache(maxsize=4096)
def _format(second: int) -> str:
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_ts(text: str) -> int:
    """Parse an RFC 3339 timestamp with an explicit offset into epoch seconds.

    Raises ``ValueError`` for anything else (naive times are refused: an expiry
    without a zone is a bug waiting for a daylight-saving change).
    """
    if not isinstance(text, str) or len(text) > 40:
        raise ValueError("not a timestamp")
    value = text.strip()
    if value.endswith(("z", "Z")):
        value = value[:-1] + "+00:00"
    parsed = datetime.fromisoformat(value)
    if "T" not in text.upper() or parsed.tzinfo is None:
        raise ValueError("timestamp needs a date, a time and a zone, e.g. 2027-01-31T00:00:00Z")
    return int(parsed.timestamp())
