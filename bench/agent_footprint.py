"""The agent's idle footprint: resident memory and CPU while it holds 16 encoders' leases.

Starts a real broker (``tenure-broker serve``) and a real ``tenure-agent run`` as
subprocesses, enrols the agent, puts ``--encoders`` leases through its Unix socket (as
encoder software would), lets it settle, then samples ``/proc/PID`` once a second for
``--seconds``: VmRSS, VmHWM (peak), RssAnon/RssFile, threads, and CPU time. CPU comes
from ``/proc/PID/task/*/schedstat`` (nanoseconds on CPU, every thread), which resolves
far below the 10 ms clock tick of ``utime``/``stime``; both are printed.

    .venv/bin/python -m bench.agent_footprint                # 16 encoders, 60 s idle
    .venv/bin/python -m bench.agent_footprint --runs 3       # repeat (shared machine)
    .venv/bin/python -m bench.agent_footprint --imports      # what each import costs

Target (issue 17, item 5): the agent's own cost, idle VmRSS with 16 encoders minus the
floor of what its libraries cost before any of its code runs (printed first), under
3 MB; idle CPU <= 0.1 %. The agent runs byte-compiled and with MALLOC_ARENA_MAX=2, as
installed (deploy/package.sh, deploy/systemd/tenure-agent.service).
Every process started here is stopped here, by its own pid.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from agent.encoder_client import EncoderClient
from bench.procs import CLK_TCK, OPERATOR_TOKEN, ROOT, Proc, start_broker

LICENCE_TYPE = "one-in-one-out"
# What deploy/systemd/tenure-agent.service sets in the agent's environment.
UNIT_ENV = ["MALLOC_ARENA_MAX=2"]


def _call(url: str, method: str, path: str, token: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def _auth_code(url: str, encoders: int, lease_seconds: int) -> str:
    """An estate, a purchase covering every encoder, the pool's lease time, a code."""
    est = _call(url, "POST", "/v1/estates", OPERATOR_TOKEN, {"name": "Footprint", "admin_name": "Bench"})
    estate, admin, pool = est["id"], est["admin_token"], est["default_pool_id"]
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 365 * 86400))
    _call(
        url,
        "POST",
        f"/v1/estates/{estate}/purchases",
        OPERATOR_TOKEN,
        {"sales_order": "SO-BENCH", "licence_type": LICENCE_TYPE, "quantity": encoders * 2, "expires_at": expires},
    )
    _call(url, "PATCH", f"/v1/estates/{estate}/pools/{pool}", admin, {"lease_seconds": lease_seconds})
    return str(_call(url, "POST", f"/v1/estates/{estate}/pools/{pool}/auth-codes", admin, {})["code"])


def _agent_exe() -> list[str]:
    exe = shutil.which("tenure-agent", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "agent.cli"]


def _status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
                out[key] = int(value.split()[0])
    return out


def _cpu_ns(pid: int) -> int:
    """Nanoseconds on CPU so far, summed over the process's threads (live ones)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # the thread ended between listdir and open
    return total


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _machine_load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def run_once(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    broker = start_broker(work / "broker", synchronous="normal", log=work / "broker.log")
    agent: subprocess.Popen[bytes] | None = None
    try:
        code = _auth_code(broker.url, args.encoders, args.lease_seconds)
        config = work / "agent.toml"
        config.write_text("# footprint bench: defaults only\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("TENURE_AGENT_") and k != "NOTIFY_SOCKET"}
        env["TENURE_AGENT_CONFIG"] = str(config)
        env.update(dict(kv.split("=", 1) for kv in args.env))
        state, sock = work / "state", work / "a.sock"
        common = ["--state-dir", str(state), "--socket", str(sock)]
        subprocess.run(
            [*_agent_exe(), "enroll", code, "--broker", broker.url, *common],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            cwd=ROOT,
        )
        log = open(work / "agent.log", "ab")
        agent = subprocess.Popen([*_agent_exe(), "run", *common], env=env, stdout=log, stderr=log, cwd=ROOT)
        log.close()
        deadline = time.monotonic() + 30
        while not sock.exists():
            if agent.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the agent did not start; see {work / 'agent.log'}")
            time.sleep(0.05)
        started = _status(agent.pid)
        client = EncoderClient(sock)
        for i in range(args.encoders):
            lease = client.acquire(f"ENC-{i:04d}", LICENCE_TYPE, 2, wait=10)
            if not lease.usable:
                raise RuntimeError(f"encoder ENC-{i:04d} got no lease: {lease.state} {lease.error_code}")
        after_leases = _status(agent.pid)
        time.sleep(args.settle)
        ns0, ticks0, t0 = _cpu_ns(agent.pid), _cpu_ticks(agent.pid), time.monotonic()
        rss_samples: list[int] = []
        threads = 0
        while time.monotonic() - t0 < args.seconds:
            time.sleep(1.0)
            st = _status(agent.pid)
            rss_samples.append(st["VmRSS"])
            threads = max(threads, st["Threads"])
        elapsed = time.monotonic() - t0
        ns1, ticks1 = _cpu_ns(agent.pid), _cpu_ticks(agent.pid)
        end = _status(agent.pid)
        held = sum(1 for e in client.status()["encoders"] if e["state"] == "active")
        return {
            "started_kb": started["VmRSS"],
            "after_leases_kb": after_leases["VmRSS"],
            "idle_rss_kb": max(rss_samples),
            "idle_rss_min_kb": min(rss_samples),
            "hwm_kb": end["VmHWM"],
            "anon_kb": end["RssAnon"],
            "file_kb": end["RssFile"],
            "threads": threads,
            "cpu_pct": 100 * (ns1 - ns0) / 1e9 / elapsed,
            "cpu_ticks": ticks1 - ticks0,
            "elapsed": elapsed,
            "held": held,
            "load": _machine_load(),
        }
    finally:
        if agent is not None and agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(20)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
        Proc.stop(broker)


# The floor: what any agent on these libraries must load before a line of its own runs.
# aiohttp's import builds its verified default TLS context (the system CA store parsed),
# which the agent uses (agent/client.py), so the floor creates no second one.
FLOOR = (
    "import asyncio, ssl, aiohttp, tenacity\n"
    "from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey"
)
# ... and the code pages that verifying one Ed25519 signature touches (cryptography's
# Rust extension and libcrypto), which the agent must do for every lease token.
VERIFY_ONE = (
    "\nkey = Ed25519PublicKey.from_public_bytes(bytes(32))\n"
    "try:\n    key.verify(bytes(64), b'x')\nexcept Exception:\n    pass"
)

# Cumulative imports, each measured in a fresh interpreter, to show where memory goes.
IMPORT_STEPS = [
    ("python (nothing imported)", ""),
    ("+ asyncio (brings ssl)", "import asyncio"),
    ("+ aiohttp (client; builds the verified TLS context)", "import asyncio, ssl, aiohttp"),
    ("+ tenacity", "import asyncio, ssl, aiohttp, tenacity"),
    ("+ cryptography Ed25519 = the floor", FLOOR),
    ("+ one Ed25519 verification = the floor in use", FLOOR + VERIFY_ONE),
    ("agent's `run` imports (agent.cli + agent.daemon)", "import agent.cli, agent.daemon"),
]

_PROBE = "\nimport re\nprint(re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read()).group(1))"


def rss_samples(code: str, env: dict[str, str], tries: int) -> list[float]:
    """VmRSS (MB) of ``tries`` fresh interpreters that ran ``code``."""
    values = []
    for _ in range(tries):
        out = subprocess.run(
            [sys.executable, "-c", code + _PROBE], capture_output=True, text=True, cwd=ROOT, env=env, check=True
        )
        values.append(int(out.stdout.strip()) / 1024)
    return values


def rss_after(code: str, env: dict[str, str], tries: int = 5) -> float:
    """The least VmRSS (MB) of ``tries`` fresh interpreters that ran ``code``."""
    return min(rss_samples(code, env, tries))


def imports(env: dict[str, str]) -> None:
    print("RSS after importing (fresh interpreter each, least of 5, MB):")
    before = None
    for name, code in IMPORT_STEPS:
        value = rss_after(code, env)
        delta = "" if before is None or name.startswith("agent") else f"  (+{value - before:.1f})"
        print(f"  {name:52s} {value:5.1f}{delta}")
        if not name.startswith("agent"):
            before = value


def compile_agent(env: dict[str, str]) -> None:
    """Byte-compile the agent as its package does when installed (deploy/package.sh runs
    compileall): with PYTHONDONTWRITEBYTECODE set, as on the development machines, every
    start would otherwise compile the agent's source, and the compiler's scratch memory
    would count as the agent's own."""
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "agent", "shared"],
        cwd=ROOT,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoders", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0, help="idle window sampled (default 60)")
    parser.add_argument("--settle", type=float, default=5.0, help="wait before sampling (default 5)")
    parser.add_argument("--lease-seconds", type=int, default=3600, help="the pool's lease lifetime (default 3600)")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the agent (after the unit's MALLOC_ARENA_MAX=2), e.g. PYTHONMALLOC=malloc",
    )
    parser.add_argument("--imports", action="store_true", help="also print the RSS cost of each import")
    args = parser.parse_args(argv)
    # The agent's environment as its systemd unit sets it (MALLOC_ARENA_MAX), then --env.
    args.env = [*UNIT_ENV, *args.env]
    env = {**os.environ, **dict(kv.split("=", 1) for kv in args.env)}
    compile_agent(env)
    if args.imports:
        imports(env)
    # The same interpreter differs from run to run by up to 0.2 MB, in the file-backed
    # pages the kernel maps around each page fault; each run of the agent is one such
    # sample, so its own cost is taken against the floor's median (like with like), and
    # against its least as well (the stricter reading, which counts that noise in).
    samples = rss_samples(FLOOR, env, 7)
    floor, least = statistics.median(samples), min(samples)
    in_use = statistics.median(rss_samples(FLOOR + VERIFY_ONE, env, 7))
    print(
        f"floor (python, asyncio, aiohttp client and its TLS context, tenacity, cryptography Ed25519): "
        f"{floor:.2f} MB, the median of 7 fresh interpreters ({least:.2f}-{max(samples):.2f}); "
        f"in use (one Ed25519 verification): {in_use:.2f} MB"
    )
    print(
        f"agent: {args.encoders} encoders, lease {args.lease_seconds} s, idle window {args.seconds:g} s "
        f"(clock tick {1000 // CLK_TCK} ms)"
    )
    own: list[float] = []
    for run in range(1, args.runs + 1):
        with tempfile.TemporaryDirectory(prefix="tfp-", dir="/tmp") as tmp:
            r = run_once(args, Path(tmp))
        mb = {k: r[k] / 1024 for k in r if k.endswith("_kb")}
        print(
            f"run {run}: started {mb['started_kb']:.1f} MB, with {r['held']} leases "
            f"{mb['after_leases_kb']:.1f} MB; idle VmRSS {mb['idle_rss_min_kb']:.1f}-{mb['idle_rss_kb']:.1f} MB "
            f"(anon {mb['anon_kb']:.1f} + file {mb['file_kb']:.1f}), VmHWM {mb['hwm_kb']:.1f} MB, "
            f"threads {r['threads']}; CPU {r['cpu_pct']:.4f} % "
            f"({r['cpu_ticks']} ticks in {r['elapsed']:.0f} s); machine load {r['load']}",
            flush=True,
        )
        idle = mb["idle_rss_kb"]
        own.append(idle - floor)
        print(
            f"run {run}: the agent's own cost: {idle - floor:.2f} MB over the floor's median "
            f"({idle - least:.2f} over its least), {idle - in_use:.2f} MB over the floor in use (target < 3 MB)",
            flush=True,
        )
    if len(own) > 1:
        print(f"own cost over the floor's median in {len(own)} runs: {min(own):.2f}-{max(own):.2f} MB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
