"""Set up what a benchmark needs through the real API: an estate, a purchase, a pool
with a chosen lease lifetime, and many enrolled servers (each with its own token)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from bench.procs import OPERATOR_TOKEN

LICENCE = "one-in-one-out"


@dataclass
class Estate:
    url: str
    estate_id: str
    admin_token: str
    pool_id: str
    purchase_id: str


async def _call(
    session: aiohttp.ClientSession, method: str, url: str, token: str | None, body: Any = None, expect: int = 201
) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    for attempt in range(5):
        async with session.request(method, url, json=body, headers=headers) as resp:
            data = await resp.read()
            if resp.status == expect:
                return json.loads(data) if data else None
            if resp.status in (429, 503) and attempt < 4:
                await asyncio.sleep(0.2 * (attempt + 1))
                continue
            raise RuntimeError(f"{method} {url} -> {resp.status}: {data[:300]!r}")
    raise AssertionError("unreachable")


async def make_estate(url: str, *, lease_seconds: int, quantity: int = 10_000_000) -> Estate:
    async with aiohttp.ClientSession() as s:
        est = await _call(
            s, "POST", f"{url}/v1/estates", OPERATOR_TOKEN, {"name": "Bench Broadcast", "admin_name": "Bench"}
        )
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 2 * 365 * 86400))
        purchase = await _call(
            s,
            "POST",
            f"{url}/v1/estates/{est['id']}/purchases",
            OPERATOR_TOKEN,
            {"sales_order": "SO-BENCH", "licence_type": LICENCE, "quantity": quantity, "expires_at": expires},
        )
        pool = await _call(
            s,
            "POST",
            f"{url}/v1/estates/{est['id']}/pools",
            est["admin_token"],
            {
                "name": "Bench pool",
                "lease_seconds": lease_seconds,
                "moves": [{"purchase_id": purchase["id"], "count": quantity}],
            },
        )
    return Estate(url, est["id"], est["admin_token"], pool["id"], purchase["id"])


async def enroll(
    estate: Estate, n: int, *, prefix: str = "srv", concurrency: int = 32, progress: bool = False
) -> list[str]:
    """Enroll ``n`` servers the way a technician would (a code each); returns their tokens."""
    tokens: list[str] = [""] * n
    next_index = 0
    started = time.monotonic()
    codes_url = f"{estate.url}/v1/estates/{estate.estate_id}/pools/{estate.pool_id}/auth-codes"

    async def worker(s: aiohttp.ClientSession) -> None:
        nonlocal next_index
        while next_index < n:
            i = next_index
            next_index += 1
            code = await _call(s, "POST", codes_url, estate.admin_token, {})
            done = await _call(
                s,
                "POST",
                f"{estate.url}/v1/enroll",
                None,
                {"code": code["code"], "name": f"{prefix}-{i:06d}", "kind": "server"},
            )
            tokens[i] = done["server_token"]
            if progress and i and i % 5000 == 0:
                print(f"    enrolled {i:,} servers ({time.monotonic() - started:.0f} s)", flush=True)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as s:
        await asyncio.gather(*(worker(s) for _ in range(concurrency)))
    return tokens
