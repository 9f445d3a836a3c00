"""``python -m bench wrk``: the focused runs again with ``wrk`` as the client.

``wrk`` (the Debian package) is the tool operators use; its figures are comparable with
theirs. One wrk thread, ``--connections`` keep-alive connections, against the same
aiohttp POST-JSON echo (``bench.echo``) for the ceiling, then against a real broker:

- ``acquire``: ``POST /v1/leases``, a fresh encoder name every request (a new lease each
  time), the bearer token of one of 64 enrolled servers in turn;
- ``renew``: ``POST /v1/leases/{id}/renew`` over leases acquired beforehand, each with
  its owner's token.

The requests are made by a Lua script written per run (``wrk.lua`` in the work
directory). Each line gives req/s, the ratio to the echo in the same round, p50 and p99
from wrk's own histogram, and the CPU per answered request of the broker (all its
processes: the parent and every worker) and of wrk, from ``/proc`` and ``wait4``;
``others`` is the CPU that every other process on the machine used meanwhile, as a share
of all cores, and ``load`` the load average after the run: on a shared machine they say
how far to trust the line.

Configurations given to ``--workers`` (e.g. ``1,2``) are run interleaved, A B A B, for
``--rounds`` rounds, each on a fresh broker; ``--env NAME=VALUE`` adds a broker setting
(e.g. ``TENURE_DATABASE_URL`` and ``TENURE_SECRET_KEY`` for PostgreSQL).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import estate as setup
from bench import load, quota
from bench.procs import CLK_TCK, Proc, machine_busy, start_broker, start_echo, tree

LUA_COMMON = """
local i = 0
local sent = 0
function done(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %d %.1f %.1f %.1f\\n",
    summary.requests, summary.duration, summary.errors.status + summary.errors.connect
      + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status, latency:percentile(50), latency:percentile(99), latency.max))
end
"""

LUA_ECHO = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
function request()
  i = i + 1
  return wrk.format(nil, "/echo", nil,
    '{"encoder":"enc-' .. i .. '","licence_type":"one-in-one-out","count":1}')
end
"""

LUA_ACQUIRE = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
function request()
  i = i + 1
  wrk.headers["Authorization"] = "Bearer " .. tokens[(i %% #tokens) + 1]
  return wrk.format(nil, "/v1/leases", nil,
    '{"encoder":"%(tag)s-' .. i .. '","licence_type":"one-in-one-out","count":1}')
end
"""

LUA_RENEW = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
function request()
  i = i + 1
  local k = (i %% #leases) + 1
  wrk.headers["Authorization"] = "Bearer " .. owners[k]
  return wrk.format(nil, "/v1/leases/" .. leases[k] .. "/renew", nil, "{}")
end
"""


@dataclass
class Line:
    label: str
    rate: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    server_us: float  # CPU per answered request, every process of the server
    client_us: float
    others_pct: float  # CPU of everything else, % of all cores
    load: str
    each_us: str = ""  # CPU per request of each server process (parent first), when several

    def text(self, ceiling: float | None) -> str:
        ratio = f"{self.rate / ceiling:5.2f}x" if ceiling else "   -  "
        return (
            f"{self.label:<22} {self.rate:8,.0f}/s {ratio}  p50 {self.p50_ms:6.1f}  p99 {self.p99_ms:6.1f}  "
            f"max {self.max_ms:6.1f} ms  errors {self.errors:<4} server {self.server_us:5.0f} us/req  "
            f"wrk {self.client_us:4.0f} us/req  others {self.others_pct:3.0f}%  load {self.load}"
            + (f"\n{'':24}per process: {self.each_us} us/req" if self.each_us else "")
        )


def _cpu(pids: list[int]) -> float:
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / CLK_TCK


def run_wrk(label: str, server: Proc, lua: str, work: Path, *, connections: int, duration: float) -> Line:
    script = work / "wrk.lua"
    script.write_text(LUA_COMMON + lua)
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    pids = tree(server.pid)
    each_before = [_cpu([pid]) for pid in pids]
    server_before, (busy_before, total_before) = _cpu(pids), machine_busy()
    proc = subprocess.Popen(
        [wrk, "-t1", f"-c{connections}", f"-d{duration:g}s", "--timeout", "10s", "-s", str(script), server.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    server_cpu = _cpu(pids) - server_before
    each = [_cpu([pid]) - before for pid, before in zip(pids, each_before, strict=True)]
    busy, total = machine_busy()
    match = re.search(r"RESULT (\d+) (\d+) (\d+) (\d+) ([\d.]+) ([\d.]+) ([\d.]+)", out)
    if proc.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {out}")
    requests, micros, errors, _status_errors = (int(match.group(k)) for k in range(1, 5))
    p50, p99, most = (float(match.group(k)) / 1000 for k in range(5, 8))
    answered = max(requests - errors, 1)
    client_cpu = usage.ru_utime + usage.ru_stime
    others = max(0.0, (busy - busy_before) - server_cpu - client_cpu) / max(total - total_before, 1e-9) * 100
    load = Path("/proc/loadavg").read_text().split()[0]
    return Line(
        label,
        answered / (micros / 1e6),
        p50,
        p99,
        most,
        errors,
        server_cpu / answered * 1e6,
        client_cpu / answered * 1e6,
        others,
        load,
        " + ".join(f"{cpu / answered * 1e6:.0f}" for cpu in each) if len(pids) > 1 else "",
    )


def _lua_list(name: str, items: list[str]) -> str:
    return f"{name} = {{" + ",".join(json.dumps(x) for x in items) + "}\n"


def broker_round(workers: int, round_no: int, work: Path, args: argparse.Namespace, env: dict[str, str]) -> list[Line]:
    data = work / f"broker-w{workers}-r{round_no}"
    broker = start_broker(
        data, log=work / f"broker-w{workers}-r{round_no}.log", env={**env, "TENURE_WORKERS": str(workers)}
    )
    lines = []
    try:
        est = asyncio.run(setup.make_estate(broker.url, lease_seconds=3600))
        tokens = asyncio.run(setup.enroll(est, 64))
        tag = f"w{workers}r{round_no}"
        lua = _lua_list("tokens", tokens) + LUA_ACQUIRE % {"tag": tag}
        if "acquire" in args.kinds:
            lines.append(
                run_wrk(
                    f"acquire, {workers} worker(s)",
                    broker,
                    lua,
                    work,
                    connections=args.connections,
                    duration=args.duration,
                )
            )
        if "renew" in args.kinds:
            _, acquired = load.run(
                "acquire", broker, load.tasks_for(tokens, 64), procs=1, duration=1.0, tag=f"{tag}pre"
            )
            acquired = acquired[:4096]
            lua = (
                _lua_list("owners", [t for t, _ in acquired])
                + _lua_list("leases", [lease for _, lease in acquired])
                + LUA_RENEW % {}
            )
            lines.append(
                run_wrk(
                    f"renew, {workers} worker(s)",
                    broker,
                    lua,
                    work,
                    connections=args.connections,
                    duration=args.duration,
                )
            )
    finally:
        broker.stop()
    return lines


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench wrk", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--workers", default="1", help="comma-separated worker counts, run interleaved (e.g. 1,2)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of every configuration")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    p.add_argument("--kinds", default="acquire,renew", help="acquire, renew or both")
    p.add_argument("--env", action="append", default=[], help="NAME=VALUE for the broker (repeatable)")
    p.add_argument("--out", type=Path, help="append the lines as JSON to this file")
    p.add_argument(
        "--cpu-quota", type=float, metavar="CORES", help="hold the runs (wrk, echo, broker) to CORES cores of CPU time"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    if args.cpu_quota:
        quota.hold(args.cpu_quota)
    env = dict(item.split("=", 1) for item in args.env)
    counts = [int(x) for x in args.workers.split(",")]
    print(
        f"wrk: 1 thread, {args.connections} connections, {args.duration:g} s a run; load average "
        f"{Path('/proc/loadavg').read_text().strip()}",
        flush=True,
    )
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tenure-wrk-") as tmp:
        work = Path(tmp)
        for round_no in range(1, args.rounds + 1):
            print(f"\n== round {round_no}", flush=True)
            echo = start_echo()
            try:
                ceiling = run_wrk("echo", echo, LUA_ECHO, work, connections=args.connections, duration=args.duration)
            finally:
                echo.stop()
            print("  " + ceiling.text(None), flush=True)
            results.append({"round": round_no, **ceiling.__dict__})
            for workers in counts:
                for line in broker_round(workers, round_no, work, args, env):
                    print("  " + line.text(ceiling.rate), flush=True)
                    results.append({"round": round_no, "ratio": line.rate / ceiling.rate, **line.__dict__})
    if args.out:
        with args.out.open("a") as f:
            f.write(json.dumps({"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "lines": results}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
