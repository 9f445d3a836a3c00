"""``python -m bench.relay``: what the relay between SQLite workers and their writer costs.

``serve --workers`` on SQLite hands each acquire, renewal and release from a worker to
the one writer process (``broker.store.relay``). This measures that hand-off alone: a
real writer process (``serve_writer`` on its own ``SqliteStore``) and, in this process,
a worker's ``RelayedSqliteStore`` sending it a job that reads two rows and changes none,
so that its COMMIT writes and flushes nothing. What is left is the relay and the batch
around the job: the frames, pickling, the event loops of both ends and BEGIN/COMMIT.

Each line gives jobs per second and the CPU per job of the writer process and of this
one (the caller), with 1 caller at a time and with 64 at once, the rounds interleaved.
``--code DIR`` (repeatable) runs the same with the ``broker`` package found in ``DIR``
(a checkout of another revision, say), interleaved with the others, to compare them on
one machine at one time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WRITER = """
import asyncio, sys
from pathlib import Path
from broker.store.relay import serve_writer, socket_path
from broker.store.sqlite import SqliteStore

async def main() -> None:
    db = Path(sys.argv[1])
    store = await SqliteStore.open(db)
    try:
        await serve_writer(store, socket_path(db.parent), lambda: print("ready", flush=True))
    finally:
        await store.close()

asyncio.run(main())
"""

CALLER = """
import asyncio, os, sys, time
from pathlib import Path
from broker.principals import lookup
from broker.store.relay import RelayedSqliteStore, relayed

def cpu(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

async def main() -> None:
    db, writer, callers, jobs = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    store = await RelayedSqliteStore.open(db)
    job = relayed(lookup, digest=b"x" * 32)

    async def caller(n: int) -> None:
        for _ in range(n):
            await store.write(job)

    await asyncio.gather(*(caller(100) for _ in range(callers)))  # connected, warm
    w0, c0, t0 = cpu(writer), cpu(os.getpid()), time.perf_counter()
    await asyncio.gather(*(caller(jobs // callers) for _ in range(callers)))
    w1, c1, t1 = cpu(writer), cpu(os.getpid()), time.perf_counter()
    done = jobs // callers * callers
    print(done / (t1 - t0), (w1 - w0) / done * 1e6, (c1 - c0) / done * 1e6, flush=True)
    await store.close()

asyncio.run(main())
"""


def measure(code: str | None, callers: int, jobs: int) -> tuple[float, float, float]:
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (code, env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryDirectory(prefix="tenure-relay-") as tmp:
        db = Path(tmp) / "tenure.db"
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, env=env, cwd=tmp, text=True
        )
        try:
            assert writer.stdout is not None
            if writer.stdout.readline().strip() != "ready":
                raise SystemExit("the writer did not start")
            out = subprocess.run(
                [sys.executable, "-c", CALLER, str(db), str(writer.pid), str(callers), str(jobs)],
                env=env,
                cwd=tmp,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        finally:
            writer.terminate()
            writer.wait(15)
    rate, writer_us, caller_us = (float(x) for x in out.split())
    return rate, writer_us, caller_us


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.relay", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--code", action="append", default=[], help="a directory holding another broker package")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--jobs", type=int, default=30_000, help="jobs measured with 64 callers (a sixth with 1)")
    args = p.parse_args(argv)
    codes: list[str | None] = [None, *args.code]
    print(f"relayed no-op jobs; load average before: {open('/proc/loadavg').read().strip()}")
    for round_no in range(1, args.rounds + 1):
        for code in codes:
            for callers, jobs in ((1, args.jobs // 6), (64, args.jobs)):
                rate, writer_us, caller_us = measure(code, callers, jobs)
                print(
                    f"round {round_no}  {code or 'this checkout':<24} {callers:>2} caller(s) {rate:8,.0f} jobs/s  "
                    f"writer {writer_us:6.1f} us/job  caller {caller_us:6.1f} us/job",
                    flush=True,
                )
    print(f"load average after: {open('/proc/loadavg').read().strip()}")
    return 0


if __name__ == "__main__":
    t = time.monotonic()
    code = main()
    print(f"({time.monotonic() - t:.0f} s)")
    sys.exit(code)
