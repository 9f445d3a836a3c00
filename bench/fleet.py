"""Fleet simulation: servers × encoders that behave like agents, on a real schedule.

Each encoder acquires once (start times spread over ``ramp`` seconds), then renews at
its lease's ``renew_after`` (a third of the lifetime), and now and then churns: it is
switched off (release, back a little later) or changes its camera count (a grow or
shrink of the same lease). Open loop: requests go out when the schedule says, not when
the previous answer came, so a slow broker shows up as latency and late renewals.
"""

from __future__ import annotations

import asyncio
import gc
import json
import multiprocessing
import random
import re
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field

from bench.estate import LICENCE
from bench.http1 import Client, bearer
from bench.procs import OPERATOR_TOKEN, Proc, machine_busy
from bench.stats import Result

OPS = ("acquire", "renew", "resize", "release")


@dataclass
class FleetPart:
    url: str
    tokens: list[str]
    first_server: int
    encoders: int
    start_at: float
    ramp: float
    measure: float
    churn: float  # probability per renewal interval that an encoder churns
    seed: int


@dataclass
class FleetOut:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in OPS})
    errors: Counter[str] = field(default_factory=Counter)
    renewals_scheduled: int = 0
    renewals_late: int = 0  # sent more than one second after renew_after
    max_lateness: float = 0.0
    lapsed: int = 0
    live_at_end: int = 0


async def _encoder(
    part: FleetPart, client: Client, token: str, serial: str, rng: random.Random, out: FleetOut, t0: float, t1: float
) -> None:
    headers = bearer(token)

    async def call(op: str, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        start = time.time()
        try:
            status, data = await client.request(method, path, headers, body)
        except OSError as exc:
            status, data = 0, type(exc).__name__.encode()
        end = time.time()
        if t0 <= start and end <= t1:
            if status < 300:
                out.latencies[op].append((end - start) * 1000)
            elif status != 410:
                out.errors[f"{op} {status}"] += 1
        return status, data

    def acquire_body(count: int) -> bytes:
        return b'{"encoder":"%s","licence_type":"%s","count":%d}' % (serial.encode(), LICENCE.encode(), count)

    await asyncio.sleep(max(0.0, part.start_at + rng.random() * part.ramp - time.time()))
    lease_id: str | None = None
    next_renew = 0.0
    while time.time() < t1:
        if lease_id is None:
            status, data = await call("acquire", "POST", "/v1/leases", acquire_body(rng.randint(1, 4)))
            if status >= 300:
                await asyncio.sleep(1 + rng.random())
                continue
            lease = json.loads(data)
            lease_id, next_renew = lease["id"], time.time() + lease["lease_seconds"] / 3
            interval = lease["lease_seconds"] / 3
            continue
        churn_at = time.time() + rng.random() * interval if rng.random() < part.churn else None
        if churn_at is not None and churn_at < next_renew:
            await asyncio.sleep(max(0.0, churn_at - time.time()))
            if rng.random() < 0.5:  # switched off for a while, then back: release, re-acquire
                await call("release", "DELETE", f"/v1/leases/{lease_id}", b"")
                lease_id = None
                await asyncio.sleep(rng.random() * 2)
            else:  # the operator changes its number of cameras
                status, data = await call("resize", "POST", "/v1/leases", acquire_body(rng.randint(1, 4)))
                if status < 300:
                    lease = json.loads(data)
                    lease_id, next_renew = lease["id"], time.time() + lease["lease_seconds"] / 3
            continue
        await asyncio.sleep(max(0.0, min(next_renew, t1) - time.time()))  # stop on time
        if time.time() >= t1:
            break
        sent = time.time()
        if t0 <= sent:
            out.renewals_scheduled += 1
            late = sent - next_renew
            out.max_lateness = max(out.max_lateness, late)
            if late > 1.0:
                out.renewals_late += 1
        status, data = await call("renew", "POST", f"/v1/leases/{lease_id}/renew", b"{}")
        if status == 200:
            next_renew = time.time() + json.loads(data)["lease_seconds"] / 3
        elif status == 410:
            out.lapsed += 1
            lease_id = None
        else:
            await asyncio.sleep(1 + rng.random())
    if lease_id is not None:
        out.live_at_end += 1


async def _run(part: FleetPart) -> FleetOut:
    out = FleetOut()
    rng = random.Random(part.seed)
    t0 = part.start_at + part.ramp
    t1 = t0 + part.measure
    client = Client(part.url, 256)  # agents share a pool of keep-alive connections
    await asyncio.gather(
        *(
            _encoder(
                part, client, token, f"enc-{part.first_server + s:06d}-{e}", random.Random(rng.random()), out, t0, t1
            )
            for s, token in enumerate(part.tokens)
            for e in range(part.encoders)
        )
    )
    client.close()
    return out


def _child(part: FleetPart) -> FleetOut:
    # A client holds tens of thousands of encoders' coroutines: a full collection of its
    # own heap stalls its loop for tens of ms, and every request in flight meanwhile
    # would count that stall as the broker's latency. The run is short; nothing leaks.
    gc.disable()
    return asyncio.run(_run(part))


def run(
    broker: Proc,
    tokens: list[str],
    *,
    encoders: int,
    ramp: float,
    measure: float,
    procs: int,
    churn: float = 0.05,
    name: str = "fleet",
) -> list[Result]:
    start_at = time.time() + 1.0
    step = (len(tokens) + procs - 1) // procs
    parts = [
        FleetPart(broker.url, tokens[i : i + step], i, encoders, start_at, ramp, measure, churn, i)
        for i in range(0, len(tokens), step)
    ]
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(len(parts)) as pool:
        pending = pool.map_async(_child, parts)
        t0 = start_at + ramp
        time.sleep(max(0.0, t0 - time.time()))
        broker.reset_peak()
        u0, m0, h0 = broker.usage(), machine_busy(), _renew_buckets(broker.url)
        time.sleep(max(0.0, t0 + measure - time.time()))
        u1, m1, h1 = broker.usage(), machine_busy(), _renew_buckets(broker.url)
        outs: list[FleetOut] = pending.get(timeout=ramp + measure + 300)
    live = len(tokens) * encoders
    results = []
    for op in OPS:
        lat = [x for o in outs for x in o.latencies[op]]
        errs: Counter[str] = Counter()
        for o in outs:
            errs.update({k: v for k, v in o.errors.items() if k.startswith(op)})
        r = Result.of(f"{name} {op}", live, lat, measure, errs)
        r.broker_cpu = 100 * (u1.cpu_seconds - u0.cpu_seconds) / measure
        r.broker_peak_mb = u1.peak_rss_mb
        r.machine_busy = 100 * (m1[0] - m0[0]) / max(1e-9, m1[1] - m0[1])
        results.append(r)
    all_lat = [x for o in outs for op in OPS for x in o.latencies[op]]
    total = Result.of(f"{name} all", live, all_lat, measure, sum((o.errors for o in outs), Counter()))
    total.broker_cpu, total.broker_peak_mb = results[0].broker_cpu, results[0].broker_peak_mb
    total.machine_busy = results[0].machine_busy
    total.extra = {
        "servers": len(tokens),
        "encoders": live,
        "renewals_scheduled": sum(o.renewals_scheduled for o in outs),
        "renewals_late_over_1s": sum(o.renewals_late for o in outs),
        "max_lateness_s": round(max(o.max_lateness for o in outs), 3),
        "lapsed": sum(o.lapsed for o in outs),
        "live_at_end": sum(o.live_at_end for o in outs),
        "broker_rss_end_mb": round(u1.rss_mb, 1),
        **_broker_side(h0, h1),
    }
    results.append(total)
    return results


_BUCKET = re.compile(
    r"^tenure_http_request_duration_seconds_bucket"
    r'\{method="POST",route="/v1/leases/\{lease\}/renew",le="([^"]+)"\} (\S+)$',
    re.M,
)


def _renew_buckets(url: str) -> dict[float, float]:
    """The broker's own histogram of renewal times (from its middleware's start to the
    answer: without the time a request waits in socket buffers or in the client)."""
    request = urllib.request.Request(f"{url}/metrics", headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            text = answer.read().decode()
    except OSError:
        return {}
    return {float(le): float(n) for le, n in _BUCKET.findall(text)}


def _broker_side(before: dict[float, float], after: dict[float, float]) -> dict[str, object]:
    """Broker-side renewals in the window: the share within 50 ms, and the bucket
    holding the p99 (the histogram's resolution)."""
    counts = {le: after[le] - before.get(le, 0.0) for le in after}
    total = counts.get(float("inf"), 0.0)
    if not total:
        return {}
    p99 = next((le for le in sorted(counts) if counts[le] >= 0.99 * total), float("inf"))
    return {
        "broker_side_renew_within_50ms": f"{100 * counts.get(0.05, 0.0) / total:.2f}%",
        "broker_side_renew_p99_at_most_ms": p99 * 1000,
    }
