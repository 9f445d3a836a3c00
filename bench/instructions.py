"""``python -m bench.instructions``: a request's cost counted in instructions, not timed.

On a shared virtual machine the CPU's speed moves from minute to minute: in one hour of
stop 29 the echo ceiling measured 7,500-16,600/s with nothing else running, so CPU seconds
cannot tell two versions of the broker apart by less than some tens of per cent.
valgrind's callgrind counts the instructions a process executes instead, a figure that
the machine's speed and its other work do not move (the kernel's share is not counted:
callgrind sees user space only).

One broker process (``workers = 1``: callgrind follows a single process) runs under
``valgrind --tool=callgrind`` with ``synchronous = FULL``. An estate and one enrolled
server are set up, ``--warm-up`` acquires are made and the counters zeroed; then
``--requests`` acquires, renewals of those leases and their releases, one at a time
over one keep-alive connection, the counters dumped after each kind. Printed: the
instructions per request of each kind, split by shared object (the interpreter, the
signature in cryptography's extension, SQLite, libc, the rest). The broker's periodic
tasks (the reaper, checkpoints) run meanwhile and are counted with the requests; a
request takes some fifty times as long under valgrind, so compare runs made with the
same ``--requests``.

    .venv/bin/python -m bench.instructions                 # 200 of each kind, ~1 min
    .venv/bin/python -m bench.instructions --code ../other-checkout   # and that broker's, with the difference

``--code DIR`` (repeatable) counts the same for the ``broker`` package found in ``DIR``
(``PYTHONPATH``, the broker started with ``python -P`` so that this checkout's directory
does not come first), after this checkout's, and prints each kind's difference.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

import aiohttp

from bench import estate as setup
from bench.procs import Proc, start_broker

KINDS = ("acquire", "renew", "release")

# Shared objects by what they do for a request; the rest are "other".
GROUPS = [
    ("the interpreter (libpython)", re.compile(r"libpython")),
    ("cryptography (the Ed25519 signature)", re.compile(r"_rust\.abi3|libcrypto")),
    ("SQLite and its module", re.compile(r"libsqlite3|_sqlite3")),
    ("libc", re.compile(r"libc[.-]")),
]
OTHER = "other C extensions (JSON, aiohttp's parser, ...)"

_OBJECT = re.compile(r"(c?)ob=\((\d+)\)(?: (.*))?$")


def by_object(lines: Iterable[str]) -> collections.Counter[str]:
    """The instructions executed in each shared object (its own, not its callees'), from
    one callgrind output file.

    callgrind names an object in full the first time, as ``ob=(3) /lib/x.so`` (or in a
    call's ``cob=``), and by its number alone after that. A cost line after ``calls=`` is
    the call's inclusive cost, which belongs to the callee: not counted here."""
    names: dict[str, str] = {}
    current = "?"
    after_call = False
    found: collections.Counter[str] = collections.Counter()
    for raw in lines:
        line = raw.rstrip("\n")
        named = _OBJECT.match(line)
        if named:
            is_call, number, name = named.groups()
            if name:
                names[number] = name
            if not is_call:
                current = names.get(number, "?")
            continue
        if line.startswith("calls="):
            after_call = True
        elif line[:1].isdigit() or line[:1] in "+-*":
            fields = line.split()
            if after_call:
                after_call = False
            elif len(fields) >= 2:
                found[current] += int(fields[1])
    return found


def totals(lines: Iterable[str]) -> int:
    """The file's own ``totals:`` line (its instructions, all objects together)."""
    for line in lines:
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise ValueError("no totals: line in the callgrind output")


def grouped(objects: collections.Counter[str]) -> dict[str, int]:
    out = {name: 0 for name, _ in GROUPS} | {OTHER: 0}
    for path, count in objects.items():
        base = Path(path).name
        group = next((name for name, pattern in GROUPS if pattern.search(base)), OTHER)
        out[group] += count
    return out


async def _requests(url: str, token: str, kind: str, n: int, leases: list[str], prefix: str = "enc") -> list[str]:
    """``n`` requests of one kind, one at a time over one connection; the new lease ids.
    Acquires name their encoders ``{prefix}-{i}``: each a new encoder, so a new lease."""
    made: list[str] = []
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(url, connector=connector, headers={"Authorization": f"Bearer {token}"}) as s:
        for i in range(n):
            if kind == "acquire":
                body = {"encoder": f"{prefix}-{i}", "licence_type": setup.LICENCE, "count": 1}
                async with s.post("/v1/leases", json=body) as r:
                    answer = await r.json()
                    if r.status not in (200, 201):
                        raise RuntimeError(f"acquire answered {r.status}: {answer}")
                    made.append(answer["id"])
            elif kind == "renew":
                async with s.post(f"/v1/leases/{leases[i]}/renew", json={}) as r:
                    if r.status != 200:
                        raise RuntimeError(f"renew answered {r.status}: {await r.text()}")
            else:
                async with s.delete(f"/v1/leases/{leases[i]}") as r:
                    if r.status >= 300:
                        raise RuntimeError(f"release answered {r.status}: {await r.text()}")
    return made


def _control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True)


def measure(requests: int, warm_up: int, work: Path, env: dict[str, str]) -> dict[str, Path]:
    """Run the broker under callgrind; the dump file of each kind."""
    out = work / "callgrind.out"
    wrap = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-P", "-m", "broker.cli"]
    broker: Proc = start_broker(
        work / "broker", log=work / "broker.log", env={**env, "TENURE_WORKERS": "1"}, wrap=wrap, ready_timeout=300
    )
    dumps: dict[str, Path] = {}
    try:
        est = asyncio.run(setup.make_estate(broker.url, lease_seconds=3600))
        token = asyncio.run(setup.enroll(est, 1))[0]
        asyncio.run(_requests(broker.url, token, "acquire", warm_up, [], prefix="warm-up"))
        pid = str(broker.proc.pid)
        _control("--zero", pid)
        leases: list[str] = []
        for number, kind in enumerate(KINDS, start=1):
            made = asyncio.run(_requests(broker.url, token, kind, requests, leases))
            leases = leases or made
            _control("--dump=" + kind, pid)
            dumps[kind] = Path(f"{out}.{number}")
    finally:
        broker.stop()
    for kind, path in dumps.items():
        if not path.exists():
            raise RuntimeError(f"callgrind wrote no {path.name} for {kind}")
    return dumps


def report(dumps: dict[str, Path], requests: int) -> dict[str, int]:
    """Print each kind's instructions a request, split; return them."""
    per_request: dict[str, int] = {}
    for kind, path in dumps.items():
        lines = path.read_text().splitlines()
        objects = by_object(lines)
        total = sum(objects.values())
        if total != totals(lines):
            raise RuntimeError(f"{path.name}: the objects' {total} instructions are not the file's {totals(lines)}")
        per_request[kind] = total // requests
        print(f"  {kind:8s} {total / requests / 1000:8,.0f} k instructions a request")
        for group, count in grouped(objects).items():
            print(f"           {count / requests / 1000:8,.0f} k  {100 * count / total:4.1f} %  {group}")
    return per_request


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="requests of each kind counted (default 200)")
    parser.add_argument("--warm-up", type=int, default=50, help="acquires before the count starts (default 50)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="a broker setting")
    parser.add_argument("--code", action="append", default=[], help="a directory holding another broker package")
    args = parser.parse_args(argv)
    settings = dict(kv.split("=", 1) for kv in args.env)
    print(f"one broker process under callgrind: {args.requests} requests of each kind, one at a time")
    counted: dict[str, dict[str, int]] = {}
    for code in [None, *args.code]:
        env = dict(settings)
        if code is not None:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (code, os.environ.get("PYTHONPATH")) if p)
        label = code or "this checkout"
        print(f"{label}:")
        with tempfile.TemporaryDirectory(prefix="tenure-callgrind-") as tmp:
            counted[label] = report(measure(args.requests, args.warm_up, Path(tmp), env), args.requests)
    base = counted["this checkout"]
    for label, figures in list(counted.items())[1:]:
        change = ", ".join(f"{kind} {100 * (figures[kind] - base[kind]) / base[kind]:+.1f} %" for kind in KINDS)
        print(f"{label} against this checkout: {change}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
