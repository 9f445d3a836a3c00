"""``python -m bench.replicas``: broker replicas on PostgreSQL beside one SQLite broker.

One run, one command (``pip install -e '.[bench-postgres]'``; PostgreSQL on this machine,
reached as ``--admin-url``, trust authentication). For each estate layout (``--estates``,
default 1 and 8) it measures, in this order:

- ``sqlite``: one real ``tenure-broker serve`` on a temporary data directory (FULL);
- ``pg×N`` for each N in ``--replicas`` (default 1, 2, 3): N real ``tenure-broker serve``
  processes on one fresh database ``tenure_bench_<pid>_<n>`` (created here, dropped after
  however the run ends), the same secret key and operator token, the clients spread over
  them round-robin, as a load balancer would.

Each configuration gets the same set-up through the API (estates, each with a purchase, a
pool and its share of ``--clients`` enrolled servers) and the same closed-loop load as
``python -m bench``: ``acquire`` (a new lease each time), then ``renew`` (those leases).
A lease route writes in its estate's *lane* (an advisory lock on PostgreSQL), so with
one estate every acquire and renewal of every replica runs one at a time; with several
estates they run side by side.

Every line prints throughput, p50/p99, and CPU per answered request from ``/proc``: the
broker processes (all replicas summed), the PostgreSQL backends of the benchmark's
database, PostgreSQL's WAL writer, checkpointer and background writer (shared with any
other database on the server), and the client processes; on PostgreSQL also the
serialization failures and deadlocks per 100 answered requests (``retry``, from the
server's log) and the mean time of one committed write transaction in a replica's worker
thread (``tx``, from the replicas' ``/metrics``). Contention: ``other`` is the CPU that
none of these used (other work on the machine, in cores), ``box`` how busy all cores
were, and the 1-minute load average before and after each run.

``--statements`` adds a pass with ``log_min_duration_statement = 0`` on the benchmark's
database (one replica and ``max(--replicas)``, one estate) and reads PostgreSQL's log
(``--pg-log``) back: statements per write transaction, and where a transaction's time in
PostgreSQL goes (lane lock, statements, COMMIT). Logging every statement slows the
server; that pass's throughput is not a figure to quote.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import os
import platform
import pstats
import re
import sys
import tempfile
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

from bench import estate as setup
from bench import load
from bench.procs import OPERATOR_TOKEN, Group, cpu_seconds, start_broker
from bench.stats import Result

AUX = ("walwriter", "checkpointer", "background writer")
KINDS = ("acquire", "renew")


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.replicas", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--replicas", default="1,2,3", help="comma-separated replica counts on PostgreSQL")
    p.add_argument("--estates", default="1,8", help="comma-separated estate counts (clients spread over them)")
    p.add_argument("--clients", type=int, default=64, help="closed-loop clients (one server each)")
    p.add_argument("--procs", type=int, default=os.cpu_count() or 2, help="client processes")
    p.add_argument("--duration", type=float, default=3.0, help="seconds measured per run")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--pool-size", type=int, help="TENURE_DATABASE_POOL_SIZE of each replica (default: the broker's)")
    p.add_argument("--no-sqlite", action="store_true", help="skip the SQLite broker")
    p.add_argument("--statements", action="store_true", help="also the statement-log pass (see above)")
    p.add_argument("--pg-log", type=Path, default=Path("/var/log/postgresql/postgresql-15-main.log"))
    p.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="instead: one SQLite broker and one replica, 1 estate, each under bench.profiled (CPU per "
        "thread), profiles into DIR and their top functions printed",
    )
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    return p.parse_args(argv)


def loadavg() -> float:
    return os.getloadavg()[0]


@dataclass
class Line:
    config: str
    estates: int
    kind: str
    result: Result
    load_before: float
    load_after: float
    pg: bool
    log: Log | None = None

    @property
    def tx_ms(self) -> float:
        """Mean time of one committed write transaction in a replica's worker thread."""
        n = self.result.extra.get("tx_n", 0.0)
        return 1000 * self.result.extra.get("tx_s", 0.0) / n if n else float("nan")

    @property
    def retries(self) -> float:
        """Serialization failures and deadlocks (each a re-run) per 100 answered requests."""
        if self.log is None or not self.result.ok:
            return float("nan")
        failed = sum(n for msg, n in self.log.errors.items() if "serialize" in msg or "deadlock" in msg)
        return 100 * failed / self.result.ok

    def us(self, key: str) -> float:
        rate = self.result.rate
        return self.result.extra.get(key, 0.0) * 1e6 / (rate * self.result.seconds) if rate else float("nan")

    def text(self) -> str:
        r = self.result
        x = r.extra
        ours = x["broker_cpu_s"] + x["clients_cpu_s"] + x.get("pg_backends_s", 0.0) + x.get("pg_aux_s", 0.0)
        others = (x["machine_busy_s"] - ours) / r.seconds
        errs = sum(r.errors.values())
        pg = (
            f"{self.us('pg_backends_s'):5.0f} {self.us('pg_aux_s'):4.0f} {self.retries:5.0f} {self.tx_ms:5.1f}"
            if self.pg
            else f"{'-':>5} {'-':>4} {'-':>5} {'-':>5}"
        )
        return (
            f"{self.config:<7} {self.estates:>2} {self.kind:<7} {r.rate:6.0f} {r.p50:6.1f} {r.p99:6.1f} "
            f"{r.broker_cpu:4.0f}% {self.us('broker_cpu_s'):5.0f} {pg} {self.us('clients_cpu_s'):4.0f} "
            f"{others:5.2f} {r.machine_busy:3.0f}% {self.load_before:4.1f}>{self.load_after:4.1f} "
            f"{errs}" + (f" {dict(r.errors)}" if errs else "")
        )


HEAD = (
    f"{'config':<7} {'e':>2} {'run':<7} {'req/s':>6} {'p50':>6} {'p99':>6} {'cpu':>5} {'brokr':>5} "
    f"{'pg':>5} {'aux':>4} {'retry':>5} {'tx':>5} {'clnt':>4} {'other':>5} {'box':>4} {'load':>9} err\n"
    f"{'':<7} {'':>2} {'':<7} {'':>6} {'ms':>6} {'ms':>6} {'':>5} {'---- µs/request ----':>16} {'%':>5} "
    f"{'ms':>5} {'µs/r':>4} {'cores':>5} {'':>4} {'1 min':>9}"
)


class StoreFigures:
    """The replicas' own write figures from ``/metrics`` (summed over replicas): seconds
    and count of committed write transactions (on PostgreSQL one per request, timed in
    the worker thread from taking a connection to after COMMIT and the lane's unlock)."""

    NAMES = ("tenure_store_commit_duration_seconds_sum", "tenure_store_commit_duration_seconds_count")

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.last: dict[str, float] = {}

    def read(self) -> dict[str, float]:
        total = dict.fromkeys(self.NAMES, 0.0)
        for url in self.urls:
            req = urllib.request.Request(url + "/metrics", headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                for line in resp.read().decode().splitlines():
                    name, _, value = line.partition(" ")
                    if name in total:
                        total[name] += float(value)
        return total

    def meters(self) -> dict[str, Callable[[], float]]:
        """Read in this order: ``tx_s`` scrapes, ``tx_n`` takes the same scrape's count."""

        def seconds() -> float:
            self.last = self.read()
            return self.last[self.NAMES[0]]

        return {"tx_s": seconds, "tx_n": lambda: self.last[self.NAMES[1]]}


class PgCpu:
    """CPU seconds of some PostgreSQL processes, listed at the first reading (after the
    warm-up, when the replicas' pools have grown) and followed by pid after that."""

    def __init__(self, admin: psycopg.Connection[Any], where: str, arg: Any) -> None:
        self.admin, self.where, self.arg = admin, where, arg
        self.pids: list[int] | None = None

    def __call__(self) -> float:
        if self.pids is None:
            rows = self.admin.execute(f"SELECT pid FROM pg_stat_activity WHERE {self.where}", (self.arg,))
            self.pids = [r[0] for r in rows]
        return cpu_seconds(self.pids)


@contextmanager
def database(
    admin: psycopg.Connection[Any], admin_url: str, name: str, *, log_statements: bool = False
) -> Iterator[str]:
    """A fresh database for one configuration, dropped after, however the run ends."""
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        if log_statements:
            admin.execute(f'ALTER DATABASE "{name}" SET log_min_duration_statement = 0')
        yield urlunsplit(urlsplit(admin_url)._replace(path="/" + name))
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start(work: Path, n: int, url: str | None, key: str, pool_size: int | None, profile: Path | None = None) -> Group:
    """One SQLite broker (``url`` None) or ``n`` replicas on ``url``, each answering; with
    ``profile``, the first under ``bench.profiled``, writing its profile there at exit."""
    env = {"TENURE_REDEEM_FAILURES_GLOBAL": "1000000"}
    if url is not None:
        env |= {"TENURE_DATABASE_URL": url, "TENURE_SECRET_KEY": key}
        if pool_size:
            env["TENURE_DATABASE_POOL_SIZE"] = str(pool_size)
    procs = []
    work.mkdir(parents=True, exist_ok=True)
    try:
        for i in range(n):
            wrap = [sys.executable, "-m", "bench.profiled", str(profile)] if profile and i == 0 else []
            procs.append(start_broker(work / f"r{i}", log=work / f"r{i}.log", env=env, wrap=wrap))
    except BaseException:
        Group(procs).stop() if procs else None
        raise
    return Group(procs)


async def estates(url: str, count: int, servers: int) -> list[str]:
    """``count`` estates with ``servers`` enrolled servers in all; the tokens interleaved
    (estate 0's first, estate 1's first, …), so clients taken in order spread evenly."""
    per = -(-servers // count)
    made = [await setup.make_estate(url, lease_seconds=3600) for _ in range(count)]
    tokens = [await setup.enroll(e, per, concurrency=16) for e in made]
    return [t[i] for i in range(per) for t in tokens][:servers]


def spread(tasks: list[load.Task], urls: list[str]) -> list[load.Task]:
    for i, t in enumerate(tasks):
        t.url = urls[i % len(urls)]
    return tasks


def measure(
    args: argparse.Namespace,
    group: Group,
    tokens: list[str],
    *,
    config: str,
    n_estates: int,
    meters: Callable[[], dict[str, Callable[[], float]]],
    dbname: str | None,
    kinds: tuple[str, ...] = KINDS,
) -> list[Line]:
    """``kinds`` runs on ``group``; with ``dbname``, also what PostgreSQL logged for that
    database during each window (``Line.log``)."""
    lines: list[Line] = []
    acquired: list[tuple[str, str]] = []
    for kind in kinds:
        marks: list[int] = []  # the server log's size at the start and the end of the window

        def mark(marks: list[int] = marks) -> float:
            marks.append(args.pg_log.stat().st_size if args.pg_log.exists() else 0)
            return 0.0

        if kind == "acquire":
            tasks = spread(load.tasks_for(tokens, args.clients), group.urls)
        else:
            tasks = spread(load.lease_tasks(acquired, args.clients), group.urls)
        before = loadavg()
        r, got = load.run(
            kind,
            group,
            tasks,
            procs=args.procs,
            duration=args.duration,
            warmup=args.warmup,
            tag=re.sub(r"\W", "", f"{config}e{n_estates}"),
            meters={**meters(), **StoreFigures(group.urls).meters(), "log": mark} if dbname else meters(),
        )
        if kind == "acquire":
            acquired = got
        line = Line(config, n_estates, kind, r, before, loadavg(), dbname is not None)
        if dbname and len(marks) == 2:
            line.log = server_log(args.pg_log, marks[0], marks[1], dbname)
        print(line.text(), flush=True)
        lines.append(line)
    return lines


# -- the statement log --------------------------------------------------------------

_PREFIX = re.compile(r"^\S+ \S+ \S+ \[\d+\] \S+@(\S+) (LOG|ERROR):  (.*)$")
_DURATION = re.compile(r"duration: ([\d.]+) ms  (parse|bind|execute|statement)")
_TEXT = re.compile(r"(?:parse|bind|execute) [^:]*: |statement: ")


@dataclass
class Log:
    """What PostgreSQL logged for one database in one window (its default log line prefix
    ``%m [%p] %q%u@%d``): errors by message, and with ``log_min_duration_statement = 0``
    each statement's executions and time (parse, bind and execute together), in ms."""

    errors: Counter[str] = field(default_factory=Counter)
    statements: dict[str, list[float]] = field(default_factory=lambda: defaultdict(lambda: [0.0, 0.0]))


def server_log(path: Path, start: int, end: int, dbname: str) -> Log:
    out = Log()
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(max(0, end - start)).decode("utf-8", "replace")
    for raw in data.splitlines():
        m = _PREFIX.match(raw)
        if not m or m.group(1) != dbname:
            continue
        if m.group(2) == "ERROR":
            out.errors[m.group(3)[:80]] += 1
            continue
        d = _DURATION.match(m.group(3))
        if not d:
            continue
        text = _TEXT.split(raw, maxsplit=1)[-1]
        key = " ".join(re.sub(r"\$\d+|'[^']*'|\d+", "?", text).split())[:72]
        out.statements[key][0] += float(d.group(1))
        if d.group(2) in ("execute", "statement"):
            out.statements[key][1] += 1
    return out


def statements_pass(args: argparse.Namespace, admin: psycopg.Connection[Any], work: Path, key: str) -> None:
    for n in sorted({1, max(int(x) for x in args.replicas.split(","))}):
        name = f"tenure_bench_{os.getpid()}_log{n}"
        with database(admin, args.admin_url, name, log_statements=True) as url:
            group = start(work / name, n, url, key, args.pool_size)
            try:
                tokens = asyncio.run(estates(group.url, 1, args.clients))
                print(f"\n-- pg×{n}, 1 estate, every statement logged", flush=True)
                for line in measure(
                    args, group, tokens, config=f"pg×{n}", n_estates=1, meters=pg_meters(admin, name), dbname=name
                ):
                    _print_statements(line)
            finally:
                group.stop()


def _print_statements(line: Line) -> None:
    """Per write transaction (per COMMIT: each request of the run is one, and requests
    straddling the window's edges are in the log but not in the request count)."""
    if line.log is None:
        return
    stats = line.log.statements
    tx = stats.get("COMMIT", [0.0, 0.0])[1]
    if not tx:
        return
    total_ms = sum(v[0] for v in stats.values())
    calls = sum(v[1] for v in stats.values())
    wall = (
        f"; wall time per transaction at {line.result.rate:.0f}/s in one lane: {1e6 / line.result.rate:.0f} µs"
        if line.result.rate
        else ""
    )
    print(
        f"   {line.kind}: {calls / tx:.1f} statements, {1000 * total_ms / tx:.0f} µs in PostgreSQL"
        f" per transaction{wall}"
    )
    for text, (ms, n) in sorted(stats.items(), key=lambda kv: -kv[1][0])[:16]:
        if n:
            print(f"   {n / tx:5.2f}/tx {1000 * ms / n:7.0f} µs each {1000 * ms / tx:6.0f} µs/tx  {text}")


def pg_meters(admin: psycopg.Connection[Any], name: str) -> Callable[[], dict[str, Callable[[], float]]]:
    """Fresh meters for each run: the database's backends, and PostgreSQL's helpers."""
    return lambda: {
        "pg_backends_s": PgCpu(admin, "datname = %s", name),
        "pg_aux_s": PgCpu(admin, "backend_type = ANY(%s)", list(AUX)),
    }


def profile_pass(args: argparse.Namespace, admin: psycopg.Connection[Any], work: Path, key: str) -> None:
    args.profile.mkdir(parents=True, exist_ok=True)
    for config in ("sqlite", "pg×1"):
        out = args.profile / f"{config.replace('×', '')}.pstats"
        name = f"tenure_bench_{os.getpid()}_prof"
        with database(admin, args.admin_url, name) as url:
            group = start(work / name / config, 1, url if config != "sqlite" else None, key, args.pool_size, out)
            try:
                tokens = asyncio.run(estates(group.url, 1, args.clients))
                lines = measure(
                    args, group, tokens, config=config, n_estates=1, meters=pg_meters(admin, name), dbname=None
                )
            finally:
                group.stop()
        requests = sum(x.result.ok for x in lines)  # the windows only: a lower bound of what was profiled
        print(f"   {config}: profile in {out}; top functions by own CPU (all threads, whole run)")
        stats = pstats.Stats(str(out))
        stats.sort_stats("tottime").print_stats(25)
        print(f"   ({requests} requests answered in the measured windows)")


def _no_nan(value: Any) -> Any:
    """``value`` with every NaN (a figure with nothing to measure) as null: strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    key = base64.b64encode(os.urandom(32)).decode()
    admin = psycopg.connect(args.admin_url, autocommit=True)
    version = admin.execute("SHOW server_version").fetchone()
    print(
        f"Tenure replicas benchmark: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"PostgreSQL {version[0] if version else '?'}, psycopg {psycopg.__version__}; {args.clients} clients "
        f"in {args.procs} processes on the same cores; {args.duration:g} s measured after {args.warmup:g} s "
        f"warm-up per run; SQLite synchronous=FULL; PostgreSQL synchronous_commit="
        f"{admin.execute('SHOW synchronous_commit').fetchone()[0]}, "  # type: ignore[index]
        f"database_pool_size {args.pool_size or 'as the broker defaults'} per replica"
    )
    print(f"load average before: {open('/proc/loadavg').read().strip()}")
    print(HEAD, flush=True)
    lines: list[Line] = []
    try:
        with tempfile.TemporaryDirectory(prefix="tenure-replicas-") as tmp:
            work = Path(tmp)
            if args.profile:
                profile_pass(args, admin, work, key)
                return 0
            for n_estates in (int(x) for x in args.estates.split(",")):
                if not args.no_sqlite:
                    group = start(work / f"sqlite-e{n_estates}", 1, None, key, None)
                    try:
                        tokens = asyncio.run(estates(group.url, n_estates, args.clients))
                        lines += measure(
                            args,
                            group,
                            tokens,
                            config="sqlite",
                            n_estates=n_estates,
                            meters=lambda: {"pg_aux_s": PgCpu(admin, "backend_type = ANY(%s)", list(AUX))},
                            dbname=None,
                        )
                    finally:
                        group.stop()
                for n in (int(x) for x in args.replicas.split(",")):
                    name = f"tenure_bench_{os.getpid()}_{n}"
                    with database(admin, args.admin_url, name) as url:
                        group = start(work / f"{name}-e{n_estates}", n, url, key, args.pool_size)
                        try:
                            tokens = asyncio.run(estates(group.url, n_estates, args.clients))
                            lines += measure(
                                args,
                                group,
                                tokens,
                                config=f"pg×{n}",
                                n_estates=n_estates,
                                meters=pg_meters(admin, name),
                                dbname=name,
                            )
                        finally:
                            group.stop()
            if args.statements:
                statements_pass(args, admin, work, key)
    finally:
        admin.close()
    print(f"load average after: {open('/proc/loadavg').read().strip()}")
    if args.out:
        data = [
            {"config": x.config, "estates": x.estates, "kind": x.kind, "load_before": x.load_before,
             "load_after": x.load_after, "retries_per_100": x.retries, "tx_ms": x.tx_ms,
             "pg_errors": dict(x.log.errors) if x.log else None, **x.result.as_dict()}
            for x in lines
        ]  # fmt: skip
        args.out.write_text(json.dumps(_no_nan(data), indent=1))
        print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
