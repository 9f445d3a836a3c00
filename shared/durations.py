"""Durations as a person reads them: "about 15 minutes", never "894 s"."""

from __future__ import annotations

from shared.words import count

MINUTE = 60
HOUR = 60 * MINUTE
DAY = 24 * HOUR


def about(seconds: float) -> str:
    """``seconds`` rounded to what a person would say: "about 30 seconds", "about 2 minutes".

    Under a minute: to 5 seconds (to the second below 5) (at least 1 second); under an hour: to the minute (at
    least 1 minute); under a day: to the hour, or the half hour below 3 hours; beyond:
    to the day. A wait is never rounded down to nothing.
    """
    seconds = max(0.0, seconds)
    if seconds < 52.5:
        rounded = round(seconds) if seconds < 5 else 5 * round(seconds / 5)
        return "about " + count(max(1, rounded), "second")
    if seconds < HOUR - 30:
        return "about " + count(max(1, round(seconds / MINUTE)), "minute")
    if seconds < 3 * HOUR - 15 * MINUTE:
        halves = round(seconds / (HOUR / 2))
        if halves % 2:
            return f"about {halves / 2:g} hours"
        return "about " + count(halves // 2, "hour")
    if seconds < DAY - 30 * MINUTE:
        return "about " + count(round(seconds / HOUR), "hour")
    return "about " + count(round(seconds / DAY), "day")
