"""RFC 3339 timestamps as the API speaks them: UTC, whole seconds, a trailing ``Z``."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from functools import lru_cache


def format_ts(epoch: float) -> str:
    """Render epoch seconds as ``2026-11-29T22:34:06Z`` (fractions are dropped)."""
    return _format(int(epoch))


# A lease answer renders four or more instants, and a busy broker renders the same few
# seconds (now, now + lifetime, a purchase's expiry) thousands of times each.
@lru_cache(maxsize=4096)
def _format(second: int) -> str:
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# RFC 3339 section 5.6 ``date-time``, ASCII digits only. Python's ``fromisoformat`` takes
# far more (ISO week dates such as 2027-W05-1, a space for the ``T``, ``+0100``, a bare
# date, Unicode digits), none of which a client of this API means.
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.[0-9]{1,9})?"
    r"(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))"
)


def parse_ts(text: str) -> int:
    """Parse an RFC 3339 ``date-time`` into epoch seconds.

    Accepted: ``2027-01-31T00:00:00Z`` (what the API writes), a lowercase ``t`` or ``z``,
    fractional seconds (dropped, as ``format_ts`` drops them) and a numeric offset
    (``2027-01-31T01:00:00+01:00`` is the same instant). Raises ``ValueError`` for anything
    else: no zone (an expiry without one is a bug waiting for a daylight-saving change),
    ISO 8601 forms outside RFC 3339 (week or ordinal dates, ``+0100``, a space for the
    ``T``), surrounding whitespace, impossible dates and leap seconds.
    """
    match = _RFC3339.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError("not an RFC 3339 timestamp such as 2027-01-31T00:00:00Z")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    zulu, sign, off_h, off_m = match.groups()[6:]
    if zulu:
        zone = UTC
    else:
        if int(off_h) > 23 or int(off_m) > 59:
            raise ValueError("the offset is out of range")
        offset = timedelta(hours=int(off_h), minutes=int(off_m))
        zone = timezone(-offset if sign == "-" else offset)
    return int(datetime(year, month, day, hour, minute, second, tzinfo=zone).timestamp())
