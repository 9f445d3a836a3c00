"""``python -m bench.copystore [--leases N]``: how long ``tenure-broker copy-store`` takes.

A real SQLite broker makes an estate through the API and stops; ``bench.seed`` grows its
database to N leases (each with its seats and an audit event); the broker starts once
more (chaining those events, as after an upgrade) and stops; then the real command copies
it into a new PostgreSQL database (``TENURE_BENCH_POSTGRES``, default the local server),
and the time of the whole command is printed with the rows it copied.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

from bench import seed
from bench.estate import make_estate
from bench.procs import start_broker

ADMIN_URL = os.environ.get("TENURE_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.copystore")
    parser.add_argument("--leases", type=int, default=100_000)
    args = parser.parse_args()
    name = f"tenure_bench_copy_{os.getpid()}"
    target = urlunsplit(urlsplit(ADMIN_URL)._replace(path="/" + name))
    with tempfile.TemporaryDirectory() as tmp, psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        data = Path(tmp) / "data"
        broker = start_broker(data, synchronous="normal")
        try:
            est = asyncio.run(make_estate(broker.url, lease_seconds=3600))
        finally:
            broker.stop()
        seed.leases(data / "tenure.db", est, args.leases)
        start_broker(data, synchronous="normal").stop()  # chains the seeded events
        size = sum(p.stat().st_size for p in data.glob("tenure.db*"))
        admin.execute(f"CREATE DATABASE {name}")
        try:
            exe = shutil.which("tenure-broker", path=str(Path(sys.executable).parent)) or "tenure-broker"
            started = time.perf_counter()
            done = subprocess.run(
                [exe, "copy-store", "--to", target, "--data-dir", str(data)],
                capture_output=True,
                text=True,
                env={**os.environ, "TENURE_LOG_LEVEL": "warning"},
                check=False,
            )
            seconds = time.perf_counter() - started
        finally:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    print(done.stdout.strip() or done.stderr.strip())
    took = f"copy-store took {seconds:.1f} s (exit {done.returncode})"
    print(f"{args.leases:,} leases, SQLite file {size / 1e6:.1f} MB: {took}")


if __name__ == "__main__":
    main()
