"""Closed-loop focused runs: N clients, each sending one request after another.

The clients are spread over ``procs`` forked processes, each with its own event loop
and one keep-alive connection per client (``bench.http1``), so that one client process
does not cap the figures. They share the machine's cores with the process under test,
as the report says.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from bench.estate import LICENCE
from bench.http1 import Client, bearer
from bench.procs import Usage, machine_busy
from bench.stats import Result

ECHO_BODY = json.dumps({"encoder": "enc-000001-0", "licence_type": LICENCE, "count": 1}).encode()


class Target(Protocol):
    """What a run measures: a ``bench.procs.Proc``, or a ``Group`` of replicas."""

    url: str

    def usage(self) -> Usage: ...

    def reset_peak(self) -> None: ...


@dataclass
class Task:
    token: str = ""
    leases: list[str] = field(default_factory=list)
    url: str = ""  # this client's server (a replica), else the run's target


@dataclass
class Part:
    kind: str  # echo | acquire | renew | release
    url: str
    tag: str
    start_at: float  # wall clock: every process starts together
    warmup: float
    duration: float
    tasks: list[Task]


@dataclass
class PartResult:
    latencies: list[float]
    errors: Counter[str]
    acquired: list[tuple[str, str]]  # (token, lease id) for later renew/release runs
    last_end: float
    cpu_seconds: float = 0.0  # this client process's CPU over the measured window


async def _task(part: Part, index: int, task: Task, out: PartResult, t0: float, t1: float) -> None:
    client = Client(task.url or part.url, 1)  # one keep-alive connection per client, as an agent has
    headers = bearer(task.token)
    url, n = "", 0
    while True:
        start = time.time()
        if start >= t1:
            return
        if part.kind == "echo":
            method, target, body = "POST", f"{url}/echo", ECHO_BODY
        elif part.kind == "acquire":
            body = b'{"encoder":"%s-%d-%d","licence_type":"%s","count":1}' % (
                part.tag.encode(),
                index,
                n,
                LICENCE.encode(),
            )
            method, target = "POST", f"{url}/v1/leases"
        elif part.kind == "renew":
            method, target, body = "POST", f"{url}/v1/leases/{task.leases[n % len(task.leases)]}/renew", b"{}"
        else:
            if n >= len(task.leases):
                return
            method, target, body = "DELETE", f"{url}/v1/leases/{task.leases[n]}", b""
        n += 1
        try:
            status, data = await client.request(method, target, headers, body)
        except OSError as exc:
            status, data = 0, str(type(exc).__name__).encode()
        end = time.time()
        good = status < 300
        if part.kind == "acquire" and status == 201:
            out.acquired.append((task.token, json.loads(data)["id"]))
        if start >= t0 and end <= t1:
            if good:
                out.latencies.append((end - start) * 1000)
                out.last_end = max(out.last_end, end)
            else:
                out.errors[str(status)] += 1


async def _run_part(part: Part) -> PartResult:
    out = PartResult([], Counter(), [], 0.0)
    delay = part.start_at - time.time()
    if delay > 0:
        await asyncio.sleep(delay)
    t0 = part.start_at + part.warmup
    t1 = t0 + part.duration

    async def clock() -> None:  # the client's own CPU over the window, as the broker's
        await asyncio.sleep(max(0.0, t0 - time.time()))
        c0 = time.process_time()
        await asyncio.sleep(max(0.0, t1 - time.time()))
        out.cpu_seconds = time.process_time() - c0

    await asyncio.gather(clock(), *(_task(part, i, t, out, t0, t1) for i, t in enumerate(part.tasks)))
    return out


def _child(part: Part) -> PartResult:
    return asyncio.run(_run_part(part))


def run(
    kind: str,
    target: Target,
    tasks: list[Task],
    *,
    procs: int,
    duration: float,
    warmup: float = 1.0,
    tag: str = "b",
    name: str | None = None,
    meters: Mapping[str, Callable[[], float]] | None = None,
) -> tuple[Result, list[tuple[str, str]]]:
    """Run ``len(tasks)`` closed-loop clients against ``target`` and measure the broker.

    ``meters`` are read at the start and the end of the measured window; each one's
    change lands in ``result.extra`` under its name (e.g. the CPU seconds of the
    database's processes), beside the CPU seconds of the client processes, the broker
    and the whole machine over the window (only when ``meters`` is given)."""
    metered = meters is not None
    meters = meters or {}
    procs = max(1, min(procs, len(tasks)))
    start_at = time.time() + 0.6
    parts = [Part(kind, target.url, f"{tag}{p}", start_at, warmup, duration, tasks[p::procs]) for p in range(procs)]
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(procs) as pool:
        pending = pool.map_async(_child, parts)
        t0 = start_at + warmup
        time.sleep(max(0.0, t0 - time.time()))
        target.reset_peak()
        u0, m0 = target.usage(), machine_busy()
        x0 = {k: f() for k, f in meters.items()}
        time.sleep(max(0.0, t0 + duration - time.time()))
        u1, m1 = target.usage(), machine_busy()
        x1 = {k: f() for k, f in meters.items()}
        outs: list[PartResult] = pending.get(timeout=duration + warmup + 120)
    latencies = [x for o in outs for x in o.latencies]
    errors: Counter[str] = Counter()
    for o in outs:
        errors.update(o.errors)
    seconds = duration
    if kind == "release":  # clients stop when they run out of leases to release
        last = max((o.last_end for o in outs), default=t0)
        seconds = max(0.001, min(duration, last - t0))
    result = Result.of(name or kind, len(tasks), latencies, seconds, errors)
    result.broker_cpu = 100 * (u1.cpu_seconds - u0.cpu_seconds) / seconds
    result.machine_busy = 100 * (m1[0] - m0[0]) / max(1e-9, m1[1] - m0[1])
    result.broker_peak_mb = u1.peak_rss_mb
    if metered:
        result.extra.update({k: x1[k] - x0[k] for k in meters})
        result.extra["clients_cpu_s"] = sum(o.cpu_seconds for o in outs)
        result.extra["machine_busy_s"] = m1[0] - m0[0]
        result.extra["broker_cpu_s"] = u1.cpu_seconds - u0.cpu_seconds
    acquired = [a for o in outs for a in o.acquired]
    return result, acquired


def tasks_for(tokens: list[str], concurrency: int) -> list[Task]:
    return [Task(token=tokens[i % len(tokens)]) for i in range(concurrency)]


def lease_tasks(acquired: list[tuple[str, str]], concurrency: int) -> list[Task]:
    """Give each client leases of one server token (a lease is renewed by its owner)."""
    by_token: dict[str, list[str]] = {}
    for token, lease in acquired:
        by_token.setdefault(token, []).append(lease)
    groups = list(by_token.items())
    tasks = [Task(token=tok, leases=[]) for tok, _ in groups[:concurrency]]
    # split a token's leases across clients when there are fewer tokens than clients
    while len(tasks) < concurrency and groups:
        tok, ls = groups[len(tasks) % len(groups)]
        tasks.append(Task(token=tok, leases=[]))
    slots: dict[str, list[Task]] = {}
    for t in tasks:
        slots.setdefault(t.token, []).append(t)
    for tok, ls in groups:
        owners = slots.get(tok)
        if not owners:
            continue
        for i, lease in enumerate(ls):
            owners[i % len(owners)].leases.append(lease)
    return [t for t in tasks if t.leases]


def summary_extra(result: Result, **extra: Any) -> Result:
    result.extra.update(extra)
    return result
