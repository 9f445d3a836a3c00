"""``python -m bench``: the broker's throughput and latency, as ratios to aiohttp's ceiling.

  python -m bench            focused sweeps (1..128 clients), NORMAL vs FULL, a fleet run
  python -m bench --quick    the same, shorter and at 16 and 64 clients only (about a minute)
  python -m bench --scale    adds 100,000 live leases renewed on schedule, and acquire
                             latency with 1,000 vs 1,000,000 leases in the database
  python -m bench wrk ...    acquire and renew with wrk as the client (python -m bench wrk -h)

Everything runs on this machine against 127.0.0.1: a real ``tenure-broker serve`` on a
temporary data directory, a tiny aiohttp echo server for the ceiling, and client
processes (``--procs``) that share the cores with the process under test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import estate as setup
from bench import fleet, load, quota, seed
from bench.procs import start_broker, start_echo
from bench.stats import Result


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="short runs, 16 and 64 clients")
    p.add_argument("--scale", action="store_true", help="also the 100k-lease and 1M-row runs")
    p.add_argument("--only-scale", action="store_true", help="only the scale runs")
    p.add_argument("--procs", type=int, default=os.cpu_count() or 2, help="client processes")
    p.add_argument("--duration", type=float, help="seconds measured per focused run")
    p.add_argument("--concurrency", help="comma-separated client counts for the sweeps")
    p.add_argument("--scale-servers", type=int, default=20_000)
    p.add_argument("--scale-encoders", type=int, default=5)
    p.add_argument(
        "--scale-lease-seconds",
        type=int,
        default=300,
        help="pool lease lifetime in the scale run (renewals every third of it)",
    )
    p.add_argument("--seed-leases", type=int, default=1_000_000, help="0 skips the 1k vs 1M run")
    p.add_argument("--out", type=Path, default=Path("bench/results.json"), help="JSON results")
    p.add_argument(
        "--cpu-quota", type=float, metavar="CORES", help="hold the run (broker and clients) to CORES cores of CPU time"
    )
    p.add_argument("--plot", type=Path, help="write SVG plots into this directory (needs matplotlib)")
    return p.parse_args(argv)


class Report:
    def __init__(self) -> None:
        self.sections: dict[str, list[dict[str, Any]]] = {}
        self.ceiling: dict[int, float] = {}

    def add(self, section: str, result: Result, *, ratio_at: int | None = None) -> None:
        ceiling = self.ceiling.get(ratio_at if ratio_at is not None else result.concurrency)
        print("  " + result.line(ceiling), flush=True)
        if result.extra:
            print("  " + " " * 22 + "  " + ", ".join(f"{k}={v}" for k, v in result.extra.items()))
        d = result.as_dict()
        d["ratio"] = result.rate / ceiling if ceiling else None
        self.sections.setdefault(section, []).append(d)


def focused(args: argparse.Namespace, report: Report, sweep: list[int], duration: float, work: Path) -> None:
    print(f"\n== Ceiling: aiohttp POST-JSON echo ({args.procs} client processes)", flush=True)
    echo = start_echo()
    try:
        for c in sweep:
            r, _ = load.run("echo", echo, [load.Task() for _ in range(c)], procs=args.procs, duration=duration)
            report.ceiling[c] = r.rate
            report.add("echo", r)
    finally:
        echo.stop()

    for sync in ("full", "normal"):
        print(f"\n== Broker, synchronous={sync.upper()}, group commit, signed leases", flush=True)
        broker = start_broker(work / f"focused-{sync}", synchronous=sync, log=work / f"broker-{sync}.log")
        try:
            est = asyncio.run(setup.make_estate(broker.url, lease_seconds=3600))
            tokens = asyncio.run(setup.enroll(est, max(sweep)))
            for c in sweep if sync == "full" else [64]:
                tag = f"{sync[0]}{c}x"
                r, acquired = load.run(
                    "acquire", broker, load.tasks_for(tokens, c), procs=args.procs, duration=duration, tag=tag
                )
                report.add(f"acquire-{sync}", r)
                leases = load.lease_tasks(acquired, c)
                r, _ = load.run("renew", broker, leases, procs=args.procs, duration=duration)
                report.add(f"renew-{sync}", r)
                r, _ = load.run("release", broker, leases, procs=args.procs, duration=duration)
                report.add(f"release-{sync}", r)
            stats = _db_stats(work / f"focused-{sync}" / "tenure.db")
            print(f"  database: {stats}")
        finally:
            broker.stop()


def _db_stats(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {
            "leases": conn.execute("SELECT COUNT(*) FROM leases").fetchone()[0],
            "active": conn.execute("SELECT COUNT(*) FROM leases WHERE state='active'").fetchone()[0],
            "events": conn.execute("SELECT COUNT(*) FROM events").fetchone()[0],
        }
    finally:
        conn.close()


def fleet_run(
    args: argparse.Namespace,
    report: Report,
    work: Path,
    *,
    servers: int,
    encoders: int,
    lease_seconds: int,
    measure: float,
    section: str,
) -> None:
    broker = start_broker(work / section, log=work / f"broker-{section}.log")
    try:
        est = asyncio.run(setup.make_estate(broker.url, lease_seconds=lease_seconds))
        t = time.monotonic()
        tokens = asyncio.run(setup.enroll(est, servers, concurrency=64, progress=True))
        print(
            f"  enrolled {servers:,} servers in {time.monotonic() - t:.0f} s; "
            f"{servers * encoders:,} encoders, leases of {lease_seconds} s renewed every "
            f"{lease_seconds // 3} s, ramp {lease_seconds // 3} s, measured {measure:.0f} s",
            flush=True,
        )
        for r in fleet.run(
            broker, tokens, encoders=encoders, ramp=lease_seconds / 3, measure=measure, procs=args.procs, name=section
        ):
            report.add(section, r, ratio_at=-1)
    finally:
        broker.stop()


def growth(args: argparse.Namespace, report: Report, work: Path) -> None:
    """Acquire latency with ~1,000 leases in the database, then with ``--seed-leases``."""
    data = work / "growth"
    broker = start_broker(data, log=work / "broker-growth.log")
    try:
        est = asyncio.run(setup.make_estate(broker.url, lease_seconds=3600))
        tokens = asyncio.run(setup.enroll(est, 64))
    finally:
        broker.stop()
    for label, target in (("1k", 1_000), ("1M", args.seed_leases)):
        have = _db_stats(data / "tenure.db")["leases"]
        if have < target:
            t = time.monotonic()
            seed.leases(data / "tenure.db", est, target - have)
            print(f"  seeded {target - have:,} leases by SQL in {time.monotonic() - t:.0f} s", flush=True)
        stats = _db_stats(data / "tenure.db")
        broker = start_broker(data, log=work / "broker-growth.log")
        try:
            for c in (1, 64):
                r, _ = load.run(
                    "acquire",
                    broker,
                    load.tasks_for(tokens, c),
                    procs=min(args.procs, c),
                    duration=3.0,
                    tag=f"g{label}{c}x",
                    name=f"acquire @{label}",
                )
                r.extra = {"leases_in_db": stats["leases"], "active": stats["active"], "events": stats["events"]}
                report.add("growth", r)
        finally:
            broker.stop()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["wrk"]:
        from bench import wrk

        return wrk.main(argv[1:])
    args = _args(argv)
    if args.cpu_quota:
        quota.hold(args.cpu_quota)
    sweep = (
        [int(x) for x in args.concurrency.split(",")]
        if args.concurrency
        else ([16, 64] if args.quick else [1, 4, 16, 64, 128])
    )
    duration = args.duration or (2.0 if args.quick else 5.0)
    report = Report()
    print(
        f"Tenure benchmark: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; {args.procs} client processes share the cores with "
        f"the server under test, so ratios are to the ceiling measured the same way."
    )
    print(
        f"load average before: {open('/proc/loadavg').read().strip()} (other work on the machine skews "
        "every figure; 'box' is how busy all cores were)"
    )
    print(
        "columns: throughput, ratio to the echo ceiling at the same client count, latency "
        "percentiles, broker CPU (% of one core) and peak RSS over the measured window"
    )
    with tempfile.TemporaryDirectory(prefix="tenure-bench-") as tmp:
        work = Path(tmp)
        if not args.only_scale:
            focused(args, report, sweep, duration, work)
            print("\n== Fleet: agents acquiring, renewing at renew_after, churning", flush=True)
            if args.quick:
                fleet_run(args, report, work, servers=300, encoders=4, lease_seconds=60, measure=25, section="fleet")
            else:
                fleet_run(args, report, work, servers=2_000, encoders=5, lease_seconds=60, measure=40, section="fleet")
        if args.scale or args.only_scale:
            n = args.scale_servers * args.scale_encoders
            print(f"\n== Scale: {n:,} live leases renewed on schedule", flush=True)
            fleet_run(
                args,
                report,
                work,
                servers=args.scale_servers,
                encoders=args.scale_encoders,
                lease_seconds=args.scale_lease_seconds,
                measure=args.scale_lease_seconds / 3 + 10,
                section="scale",
            )
            if args.seed_leases:  # 0: the 100k run alone
                print(f"\n== Scale: acquire with ~1,000 vs {args.seed_leases:,} leases in the database", flush=True)
                growth(args, report, work)
    report_data = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "procs": args.procs,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "ceiling": report.ceiling,
        "sections": report.sections,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report_data, indent=1))
    print(f"\nresults written to {args.out}")
    if args.plot:
        from bench import plot

        for path in plot.write(report_data, args.plot):
            print(f"plot written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
