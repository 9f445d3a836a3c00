"""``GET /metrics``: Prometheus text exposition for the operator's scraper.

Labels are bounded: routes are templates (never URLs, so ids in paths never become label
values) and estates and pools are named by id, never by their editable names. What an
operator pages on: ``tenure_up``, seats in use and available per pool, codes refused and
rate-limit trips (someone guessing codes), leases lapsed (encoders that stopped
renewing), failed commits, store and request latency, and group commit's batch sizes.
Format and ``process_*``: ``broker.api.exposition``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from broker import pools
from broker.api.exposition import Exposition, process_figures, process_metrics
from broker.api.http import authenticate, route, services
from broker.api.stream import HUB
from broker.errors import Inconsistent
from broker.figures import WRITER, Figures, gather, publish, publish_loop, total
from broker.services import SERVICES
from broker.store.base import Histogram, StoreStats, Tx
from broker.webhooks import endpoints
from shared import __version__

WORKER = web.AppKey("worker", int)
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class RequestMetrics:
    """Per (method, route template): answers by status, latency; 429s by route."""

    def __init__(self) -> None:
        self.count: dict[tuple[str, str, int], int] = defaultdict(int)
        self.seconds: dict[tuple[str, str], Histogram] = {}
        self.rate_limited: dict[str, int] = defaultdict(int)

    def observe(self, method: str, path: str, status: int, seconds: float) -> None:
        self.count[(method, path, status)] += 1
        hist = self.seconds.get((method, path))
        if hist is None:
            hist = self.seconds[(method, path)] = Histogram(_SECONDS)
        hist.observe(seconds)
        if status == 429:
            self.rate_limited[path] += 1


REQUESTS = web.AppKey("request_metrics", RequestMetrics)


def _books(tx: Tx, now: float) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
    """The counts, and every live pool's view (the same figures the API answers)."""
    counts = tx.one("metrics_counts", now=int(now))
    if counts is None:
        raise Inconsistent("metrics_counts returned no row")
    views = [(e["id"], view) for e in tx.all("estate_ids") for view in pools.list_views(tx, now, e["id"])]
    return counts, views


@route(
    "GET",
    "/metrics",
    summary="Prometheus metrics (the operator token or the read-only metrics token)",
    tag="public",
    auth=("operator", "metrics"),
    responses={200: None},
)
async def metrics(request: web.Request) -> web.StreamResponse:
    await authenticate(request, ("operator", "metrics"))
    svc = services(request)
    now = svc.clock.now()
    counts, views = await svc.store.read(lambda tx: _books(tx, now))
    out = Exposition()
    out.single("tenure_up", "gauge", "1 while the broker answers scrapes.", 1)
    out.family("tenure_build_info", "gauge", "The broker's version (always 1).", [({"version": __version__}, 1)])
    for name, help_ in (
        ("estates", "Estates."),
        ("pools", "Pools not deleted."),
        ("servers", "Enrolled servers and domains not removed."),
        ("live_leases", "Active leases not yet past their expiry."),
        ("seats_in_use", "Seats held by live leases, all estates."),
    ):
        out.single(f"tenure_{name}", "gauge", help_, counts[name])
    _pool_figures(out, views)
    hooks = await svc.store.read(endpoints.metrics)
    for name, key, help_ in (
        ("deliveries_pending", "pending", "Webhook deliveries waiting for an attempt or a retry (all brokers)."),
        ("deliveries_failed", "failed", "Webhook deliveries given up after every attempt, in the last 30 days."),
        ("endpoints_failing", "failing", "Webhook endpoints whose last three or more attempts failed."),
    ):
        out.single(f"tenure_webhook_{name}", "gauge", help_, int(hooks[key]))
    out.single(
        "tenure_leases_lapsed_total",
        "counter",
        "Leases ended because they were neither renewed nor released before expiry (all brokers on this database).",
        counts["leases_lapsed"],
    )
    directory = svc.config.figures_dir
    own = own_figures(request.app)
    live: list[Figures] = [own]
    dead: list[Figures] = []
    if directory is not None:
        publish(directory, own)  # first, so that a scrape never sees less than the last one
        live, dead = gather(directory)
        if not any(f.pid == own.pid for f in live):  # unreadable: this worker's own, at least
            live = [own]
    _process_figures(out, live, labelled=directory is not None)
    _summed_figures(out, total(live + dead))
    return web.Response(
        text=out.text(), content_type="text/plain", charset="utf-8", headers={"Cache-Control": "no-store"}
    )


def own_figures(app: web.Application) -> Figures:
    """What this process counted, and its gauges."""
    req = app[REQUESTS]
    svc = app[SERVICES]
    hub = app.get(HUB)
    return Figures(
        worker=str(app[WORKER]),
        pid=os.getpid(),
        requests=req.count,
        durations=req.seconds,
        rate_limited=req.rate_limited,
        codes_redeemed=svc.counters.codes_redeemed,
        codes_refused=svc.counters.codes_refused,
        store=svc.store.stats,
        streams_open=hub.open_streams if hub else 0,
        process=process_figures(),
    )


def publishing(directory: Path) -> Callable[[web.Application], AsyncIterator[None]]:
    """Under ``serve --workers``: this worker's figures into ``directory`` every second."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.get_running_loop().create_task(publish_loop(directory, lambda: own_figures(app)))
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return ctx


def _process_figures(out: Exposition, live: list[Figures], *, labelled: bool) -> None:
    """One process's gauges: under ``serve --workers`` one sample per live process."""

    def labels(f: Figures) -> dict[str, str | int]:
        return {"worker": f.worker} if labelled else {}

    out.family(
        "tenure_worker_info",
        "gauge",
        "The broker's processes (always 1): the index of each under serve --workers (the SQLite writer is "
        '"writer") and its pid.',
        [({"worker": f.worker, "pid": f.pid}, 1) for f in live],
    )
    out.family(
        "tenure_streams_open",
        "gauge",
        "Agents' event streams open, by worker under serve --workers.",
        [(labels(f), f.streams_open) for f in live if f.worker != WRITER],
    )
    process_metrics(out, [(labels(f), f.process) for f in live])


def _summed_figures(out: Exposition, summed: Figures) -> None:
    """Counters and histograms: every process's, summed."""
    out.single("tenure_codes_redeemed_total", "counter", "Codes redeemed (servers enrolled).", summed.codes_redeemed)
    out.single(
        "tenure_codes_refused_total",
        "counter",
        "Code redemptions refused: wrong, used or expired.",
        summed.codes_refused,
    )
    out.family(
        "tenure_rate_limit_trips_total",
        "counter",
        "Requests refused 429 rate_limited, by route template.",
        [({"route": path}, n) for path, n in sorted(summed.rate_limited.items())],
    )
    _store_figures(out, summed.store)
    out.family(
        "tenure_http_requests_total",
        "counter",
        "HTTP requests answered, by method, route template and status.",
        [({"method": m, "route": p, "status": s}, n) for (m, p, s), n in sorted(summed.requests.items())],
    )
    out.histograms(
        "tenure_http_request_duration_seconds",
        "Time from request to answer in seconds, by method and route template.",
        [({"method": m, "route": p}, h) for (m, p), h in sorted(summed.durations.items())],
    )


def _pool_figures(out: Exposition, views: list[tuple[str, dict[str, Any]]]) -> None:
    for name, key, help_ in (
        ("allocated", "allocated", "Seats allocated to the pool, by estate and pool id."),
        ("in_use", "in_use", "Seats of the pool held by live leases, by estate and pool id."),
        ("available", "available", "Seats of the pool a new lease could take now, by estate and pool id."),
    ):
        out.family(
            f"tenure_pool_seats_{name}",
            "gauge",
            help_,
            [({"estate": estate, "pool": view["id"]}, view[key]) for estate, view in views],
        )


def _store_figures(out: Exposition, stats: StoreStats) -> None:
    for name, value, help_ in (
        ("commits", stats.commits, "Write transactions committed (one per group-commit batch)."),
        ("write_jobs", stats.write_jobs, "Write jobs run; jobs per commit shows group commit at work."),
        ("read_jobs", stats.read_jobs, "Read jobs run."),
        ("failed_commits", stats.failed_commits, "Write transactions that failed; their requests were answered 503."),
        (
            "write_retries",
            stats.retries,
            "Write transactions run again after a serialization failure, deadlock or connection lost "
            "before COMMIT (PostgreSQL); their requests were still answered.",
        ),
    ):
        out.single(f"tenure_store_{name}_total", "counter", help_, value)
    out.histograms("tenure_store_batch_jobs", "Write jobs per group-commit transaction.", [({}, stats.batch_jobs)])
    out.histograms(
        "tenure_store_commit_duration_seconds",
        "From BEGIN to durable COMMIT of a group-commit transaction, in seconds.",
        [({}, stats.commit_seconds)],
    )
    out.histograms(
        "tenure_store_read_duration_seconds",
        "From hand-off to answer of a read, in seconds.",
        [({}, stats.read_seconds)],
    )
