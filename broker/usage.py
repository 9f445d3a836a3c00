"""Usage over time: each pool's allocated / in use / available, and the same per licence
type across the estate, sampled by the broker and kept small by roll-ups.

Sampling. Every five minutes (a *round*, aligned to the epoch) one broker — whichever
claims the round's row in ``usage_rounds`` first, so that several replicas sample it once
— stores a point for each live pool (series ``pool:<id>``) and each licence type the
estate holds (series ``type:<licence type>``). Nothing is added to the acquire or renew
path: the figures are those the pools list shows, read once per round.

Retention. Five-minute points are kept for two days, hourly points for 60 days, daily
points for two years. Points past their tier's age are rolled up into the next tier in
the same transaction that samples: an hourly (daily) point keeps the largest
``allocated`` and ``in_use`` and the smallest ``available`` of the points it replaces,
so that a peak is never averaged away. A series therefore holds at most about
576 + 1,440 + 731 rows, whatever the size of the estate or the age of the broker.

Reading. ``series`` answers one point per ``step`` seconds at multiples of ``step``
(the first at or after ``start``): each summarises the stored points whose span starts
in ``[t, t + step)`` in the same way (max, max, min). When the range reaches the present,
the last point is the live figures at the moment of the request.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from broker import pools
from broker.store.base import Row, Tx
from shared.timefmt import format_ts

ROUND = 300
HOUR = 3600
DAY = 86400
# (resolution, kept for, rolled into): the tiers, finest first.
TIERS = ((ROUND, 2 * DAY, HOUR), (HOUR, 60 * DAY, DAY))
DAILY_KEPT = 731 * DAY
MAX_POINTS = 100_000
"""The most steps one range may span (a year at five-minute steps, 105,120, is refused). An
answer holds a point only where history is stored, so its size is bounded by the rows a
series keeps whatever the step; this cap refuses ranges that are surely mistakes."""


def round_of(now: float) -> int:
    """The start of the five-minute round ``now`` falls in."""
    t = int(now)
    return t - t % ROUND


def estates_due(tx: Tx, now: float) -> list[str]:
    """Estates whose current round no broker has sampled yet (a read, to skip writes)."""
    return [r["id"] for r in tx.all("usage_estates_due", at=round_of(now))]


def sample(tx: Tx, now: float, estate_id: str) -> bool:
    """Claim this round for the estate and store its points, then roll up what has aged.

    False (and nothing written) when another broker claimed the round first.
    """
    at = round_of(now)
    if tx.run("usage_round_claim", estate_id=estate_id, at=at) == 0:
        return False
    views = pools.list_views(tx, now, estate_id)
    for series, figures in _live_series(views).items():
        tx.run("usage_point_put", estate_id=estate_id, series=series, resolution=ROUND, at=at, **figures)
    roll_up(tx, now, estate_id)
    return True


def roll_up(tx: Tx, now: float, estate_id: str) -> None:
    """Fold points older than their tier keeps into the next tier; drop daily points past
    ``DAILY_KEPT``. Cut-offs fall on the coarser tier's boundaries."""
    for resolution, kept, coarser in TIERS:
        before = _floor(now - kept, coarser)
        rows = tx.all("usage_points_before", estate_id=estate_id, resolution=resolution, before=before)
        if not rows:
            continue
        folded: dict[tuple[str, int], dict[str, int]] = {}
        for r in rows:
            key = (r["series"], _floor(r["at"], coarser))
            _merge(folded.setdefault(key, _empty()), r)
        for (series, at), figures in folded.items():
            tx.run("usage_point_put", estate_id=estate_id, series=series, resolution=coarser, at=at, **figures)
        tx.run("usage_points_drop", estate_id=estate_id, resolution=resolution, before=before)
    tx.run("usage_points_drop", estate_id=estate_id, resolution=DAY, before=_floor(now - DAILY_KEPT, DAY))
    tx.run("usage_rounds_purge", estate_id=estate_id, before=_floor(now - TIERS[0][1], ROUND))


def stored_rows(tx: Tx, estate_id: str, series: str) -> dict[int, int]:
    """Rows kept for one series, by resolution (for tests and operators' curiosity)."""
    return {r["resolution"]: r["n"] for r in tx.all("usage_points_count", estate_id=estate_id, series=series)}


@dataclass(frozen=True)
class Range:
    """A validated request: points at multiples of ``step`` in ``[start, end)``, then the
    live figures at ``now`` when ``live``."""

    start: int
    end: int
    step: int
    live: bool


def pool_usage(tx: Tx, now: float, estate_id: str, pool_id: str, r: Range) -> dict[str, Any]:
    """``{pool_id, step, points, peak_in_use}`` for one pool (404 for another estate's)."""
    pool = pools.view(tx, now, estate_id, pool_id)
    rows = tx.all("usage_points_of_series", estate_id=estate_id, series=f"pool:{pool_id}", start=r.start, end=r.end)
    live = {k: pool[k] for k in ("allocated", "in_use", "available")}
    return {"pool_id": pool_id, "step": r.step, **_points(rows, r, now, live)}


def estate_usage(tx: Tx, now: float, estate_id: str, r: Range) -> dict[str, Any]:
    """``{estate_id, step, by_type: {licence type: {points, peak_in_use}}}``: the same per
    licence type across all the estate's pools."""
    rows: dict[str, list[Row]] = defaultdict(list)
    for row in tx.all("usage_points_of_types", estate_id=estate_id, start=r.start, end=r.end):
        rows[row["series"].removeprefix("type:")].append(row)
    live = {
        k.removeprefix("type:"): v
        for k, v in _live_series(pools.list_views(tx, now, estate_id)).items()
        if k[:5] == "type:"
    }
    types = sorted(set(rows) | (set(live) if r.live else set()))
    return {
        "estate_id": estate_id,
        "step": r.step,
        "by_type": {t: _points(rows[t], r, now, live.get(t, _zero())) for t in types},
    }


def _points(rows: Iterable[Row], r: Range, now: float, live: dict[str, int]) -> dict[str, Any]:
    buckets: dict[int, dict[str, int]] = {}
    for row in rows:
        _merge(buckets.setdefault(_floor(row["at"], r.step), _empty()), row)
    stamped = sorted(buckets.items())
    if r.live:
        stamped.append((int(now), live))
    points = [{"at": format_ts(at), **figures} for at, figures in stamped]
    return {"points": points, "peak_in_use": max((figures["in_use"] for _, figures in stamped), default=0)}


def _live_series(views: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for view in views:
        out[f"pool:{view['id']}"] = {k: view[k] for k in ("allocated", "in_use", "available")}
        for licence_type, figures in view["by_type"].items():
            total = out.setdefault(f"type:{licence_type}", _zero())
            for k in ("allocated", "in_use", "available"):
                total[k] += figures[k]
    return out


def _empty() -> dict[str, int]:
    return {"allocated": -1, "in_use": -1, "available": -1}


def _zero() -> dict[str, int]:
    return {"allocated": 0, "in_use": 0, "available": 0}


def _merge(into: dict[str, int], row: Row) -> None:
    into["allocated"] = max(into["allocated"], row["allocated"])
    into["in_use"] = max(into["in_use"], row["in_use"])
    into["available"] = row["available"] if into["available"] < 0 else min(into["available"], row["available"])


def _floor(t: float, step: int) -> int:
    t = int(t)
    return t - t % step
