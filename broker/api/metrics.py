"""``GET /metrics``: Prometheus text exposition for the operator's scraper.

Request counts and latencies are kept per route (not per URL, so ids never become
label values); the store's counters show group commit at work (jobs per commit).
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from aiohttp import web

from broker.api.http import Handler, authenticate, route, services
from broker.errors import Inconsistent

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class RequestMetrics:
    def __init__(self) -> None:
        self.count: dict[tuple[str, str, int], int] = defaultdict(int)
        self.buckets: dict[tuple[str, str], list[int]] = {}
        self.total: dict[tuple[str, str], float] = defaultdict(float)

    def observe(self, method: str, path: str, status: int, seconds: float) -> None:
        self.count[(method, path, status)] += 1
        key = (method, path)
        counts = self.buckets.get(key)
        if counts is None:
            counts = self.buckets[key] = [0] * (len(_BUCKETS) + 1)
        for i, bound in enumerate(_BUCKETS):
            if seconds <= bound:
                counts[i] += 1
                break
        else:
            counts[-1] += 1
        self.total[key] += seconds


REQUESTS = web.AppKey("request_metrics", RequestMetrics)


@web.middleware
async def measure(request: web.Request, handler: Handler) -> web.StreamResponse:
    start = time.perf_counter()
    response = await handler(request)
    info = request.match_info.route.resource
    path = info.canonical if info is not None else "unmatched"
    request.app[REQUESTS].observe(request.method, path, response.status, time.perf_counter() - start)
    return response


def _line(name: str, labels: dict[str, Any], value: float) -> str:
    if labels:
        inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
        return f"{name}{{{inner}}} {value}"
    return f"{name} {value}"


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
    counts = await svc.store.read(lambda tx: tx.one("metrics_counts", now=int(now)))
    if counts is None:
        raise Inconsistent("metrics_counts returned no row")
    out = ["# TYPE tenure_up gauge", "tenure_up 1"]
    for name in ("estates", "pools", "servers", "live_leases", "seats_in_use"):
        out += [f"# TYPE tenure_{name} gauge", _line(f"tenure_{name}", {}, counts[name])]
    stats = svc.store.stats
    for name, value in (
        ("commits", stats.commits),
        ("write_jobs", stats.write_jobs),
        ("read_jobs", stats.read_jobs),
        ("failed_commits", stats.failed_commits),
    ):
        out += [f"# TYPE tenure_store_{name}_total counter", _line(f"tenure_store_{name}_total", {}, value)]
    req = request.app[REQUESTS]
    out.append("# TYPE tenure_http_requests_total counter")
    for (method, path, status), n in sorted(req.count.items()):
        out.append(_line("tenure_http_requests_total", {"method": method, "route": path, "status": status}, n))
    out.append("# TYPE tenure_http_request_seconds histogram")
    for (method, path), counts_ in sorted(req.buckets.items()):
        labels = {"method": method, "route": path}
        running = 0
        for bound, n in zip((*_BUCKETS, float("inf")), counts_, strict=True):
            running += n
            le = "+Inf" if bound == float("inf") else str(bound)
            out.append(_line("tenure_http_request_seconds_bucket", {**labels, "le": le}, running))
        out.append(_line("tenure_http_request_seconds_count", labels, running))
        out.append(_line("tenure_http_request_seconds_sum", labels, round(req.total[(method, path)], 6)))
    return web.Response(text="\n".join(out) + "\n", content_type="text/plain", charset="utf-8")
