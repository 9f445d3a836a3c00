"""What one broker process counted, for ``GET /metrics``; under ``serve --workers``, what
every process of the broker counted, in one answer.

Each process of ``serve --workers`` (every worker, and the SQLite writer) writes its own
figures to ``<pid>.json`` in a directory the parent made: once a second, and before it
answers a scrape. A scrape sums the files, so one answer covers the whole broker whichever
worker the kernel hands it to. Its counters only ever grow: each file is replaced whole
(``os.replace``) by a newer one, and the worker answering writes its own first.

When a process dies the parent renames its file ``<pid>.dead.json``: what it counted keeps
counting (its successor starts again at zero, and the sum does not drop, at most the last
second's counts go with it), while its gauges (its memory, its open streams) no longer
appear. Gauges of one process are labelled ``worker`` ("0", "1", …, "writer").
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.store.base import Histogram, Store, StoreStats

log = logging.getLogger("tenure.broker")

PUBLISH_SECONDS = 1.0
WRITER = "writer"
_DEAD = ".dead.json"
_HISTOGRAMS = ("batch_jobs", "commit_seconds", "read_seconds")


@dataclass
class Figures:
    """One process's counters and gauges (or, summed, a broker's counters)."""

    worker: str  # "0", "1", …, or "writer"
    pid: int
    requests: dict[tuple[str, str, int], int] = field(default_factory=lambda: defaultdict(int))
    durations: dict[tuple[str, str], Histogram] = field(default_factory=dict)
    rate_limited: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    codes_redeemed: int = 0
    codes_refused: int = 0
    store: StoreStats = field(default_factory=StoreStats)
    streams_open: int = 0  # gauges from here on
    process: dict[str, float] = field(default_factory=dict)


def of_writer(store: Store) -> Figures:
    """What the SQLite writer of ``serve --workers`` counted: its store's figures."""
    from broker.api.exposition import process_figures

    return Figures(worker=WRITER, pid=os.getpid(), store=store.stats, process=process_figures())


def _histogram(data: dict[str, Any]) -> Histogram:
    hist = Histogram(data["bounds"])
    hist.counts = [int(n) for n in data["counts"]]
    hist.total = float(data["total"])
    return hist


def _hist_json(hist: Histogram) -> dict[str, Any]:
    return {"bounds": list(hist.bounds), "counts": hist.counts, "total": hist.total}


def to_json(f: Figures) -> dict[str, Any]:
    store = dataclasses.asdict(f.store)
    for name in _HISTOGRAMS:
        store[name] = _hist_json(getattr(f.store, name))
    return {
        "worker": f.worker,
        "pid": f.pid,
        "requests": [[m, p, s, n] for (m, p, s), n in f.requests.items()],
        "durations": [[m, p, _hist_json(h)] for (m, p), h in f.durations.items()],
        "rate_limited": dict(f.rate_limited),
        "codes_redeemed": f.codes_redeemed,
        "codes_refused": f.codes_refused,
        "store": store,
        "streams_open": f.streams_open,
        "process": f.process,
    }


def from_json(data: dict[str, Any]) -> Figures:
    store = dict(data["store"])
    for name in _HISTOGRAMS:
        store[name] = _histogram(store[name])
    return Figures(
        worker=str(data["worker"]),
        pid=int(data["pid"]),
        requests={(m, p, int(s)): int(n) for m, p, s, n in data["requests"]},
        durations={(m, p): _histogram(h) for m, p, h in data["durations"]},
        rate_limited={k: int(v) for k, v in data["rate_limited"].items()},
        codes_redeemed=int(data["codes_redeemed"]),
        codes_refused=int(data["codes_refused"]),
        store=StoreStats(**store),
        streams_open=int(data["streams_open"]),
        process={k: float(v) for k, v in data["process"].items()},
    )


def _add_histogram(into: dict[Any, Histogram], key: Any, hist: Histogram) -> None:
    mine = into.get(key)
    if mine is None:
        mine = into[key] = Histogram(hist.bounds)
    if mine.bounds != hist.bounds:  # another version's buckets: not summable, and never expected
        return
    mine.counts = [a + b for a, b in zip(mine.counts, hist.counts, strict=True)]
    mine.total += hist.total


def total(figures: list[Figures]) -> Figures:
    """The counters and histograms of ``figures`` summed (gauges are left at zero)."""
    out = Figures(worker="all", pid=0)
    stores: dict[str, Histogram] = {}
    for f in figures:
        for key, n in f.requests.items():
            out.requests[key] += n
        for key2, hist in f.durations.items():
            _add_histogram(out.durations, key2, hist)
        for path, n in f.rate_limited.items():
            out.rate_limited[path] += n
        out.codes_redeemed += f.codes_redeemed
        out.codes_refused += f.codes_refused
        s = f.store
        for name in ("commits", "write_jobs", "read_jobs", "failed_commits", "retries", "checkpoints"):
            setattr(out.store, name, getattr(out.store, name) + getattr(s, name))
        out.store.largest_batch = max(out.store.largest_batch, s.largest_batch)
        for name in _HISTOGRAMS:
            _add_histogram(stores, name, getattr(s, name))
    for name, hist in stores.items():
        setattr(out.store, name, hist)
    return out


def publish(directory: Path, figures: Figures) -> None:
    """Replace this process's file with ``figures``, whole."""
    path = directory / f"{figures.pid}.json"
    part = directory / f"{figures.pid}.part"
    part.write_text(json.dumps(to_json(figures), separators=(",", ":")))
    os.replace(part, path)


def gather(directory: Path) -> tuple[list[Figures], list[Figures]]:
    """The figures of the processes alive, and of those that have died."""
    for _ in range(3):  # a file renamed .dead between listing and reading: list again
        live: list[Figures] = []
        dead: list[Figures] = []
        try:
            for name in sorted(os.listdir(directory)):
                if not name.endswith(".json"):
                    continue
                data = json.loads((directory / name).read_text())
                (dead if name.endswith(_DEAD) else live).append(from_json(data))
        except FileNotFoundError:
            continue
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("workers' figures in %s are unreadable: %s", directory, exc)
            break
        live.sort(key=lambda f: (f.worker == WRITER, int(f.worker) if f.worker.isdigit() else 0))
        return live, dead
    return [], []


def retire(directory: Path, pid: int) -> None:
    """``pid`` has exited: its counts stay in the sum, its gauges leave it."""
    with contextlib.suppress(FileNotFoundError):
        os.replace(directory / f"{pid}.json", directory / f"{pid}{_DEAD}")


async def publish_loop(directory: Path, make: Callable[[], Figures]) -> None:
    """Publish ``make()`` every ``PUBLISH_SECONDS`` until cancelled, and once more then."""
    try:
        while True:
            _publish_quietly(directory, make)
            await asyncio.sleep(PUBLISH_SECONDS)
    finally:
        _publish_quietly(directory, make)


def _publish_quietly(directory: Path, make: Callable[[], Figures]) -> None:
    try:
        publish(directory, make())
    except OSError as exc:  # the parent removed the directory as it stopped, or a full disk
        log.debug("cannot publish this worker's figures: %s", exc)
