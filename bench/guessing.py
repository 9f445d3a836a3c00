"""``python -m bench.guessing``: how fast can many addresses guess a code, and who still enrols?

Drives the broker's own ``StoredLimiter`` (with its default budgets, on a SQLite database
in a temporary directory) on a manual clock:
attackers on NETWORKS networks (IPv4 /24s) with ADDRESSES addresses each try a wrong code
every simulated minute from every address, as fast as the limiter lets them; once an hour
a technician on a network of her own redeems a correct code. It reports the guesses the
broker actually checked per day, the technicians refused (should be none), and the
expected time to hit one of LIVE live codes among the 10^7 codes a check digit leaves.

  python -m bench.guessing --networks 1000 --addresses 16 --hours 2
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import tempfile
from pathlib import Path

from broker.clock import ManualClock
from broker.config import Config
from broker.errors import RateLimited
from broker.ratelimit import IPAddress, StoredLimiter
from broker.store.sqlite import SqliteStore

CODE_SPACE = 10**7  # 8 digits, the last a Damm check digit over the first seven


async def _guess(limiter: StoredLimiter, client: IPAddress) -> int:
    """1 when the wrong guess was checked, 0 when it was refused."""
    try:
        await limiter.begin(client)
    except RateLimited:
        return 0
    await limiter.finish(client, failed=True)
    return 1


async def simulate(
    networks: int, addresses: int, hours: int, limiter: StoredLimiter, clock: ManualClock
) -> tuple[int, int]:
    """(guesses checked, technicians refused) over ``hours`` of simulated attack."""
    attackers = [
        ipaddress.IPv4Address(0x0A000000 + (net << 8) + host) for net in range(networks) for host in range(addresses)
    ]
    checked = refused = 0
    for minute in range(hours * 60):
        # Each minute's guesses arrive together, as from a fleet of attackers.
        checked += sum(await asyncio.gather(*(_guess(limiter, client) for client in attackers)))
        if minute % 60 == 30:
            technician = ipaddress.IPv4Address(0xC0000200 + minute // 60 % 256)  # 192.0.2.x, a clean network
            try:
                await limiter.begin(technician)
                await limiter.finish(technician, failed=False)
            except RateLimited:
                refused += 1
        clock.advance(60)
    return checked, refused


async def _run(networks: int, addresses: int, hours: int, defaults: Config) -> tuple[int, int]:
    clock = ManualClock(0.0)
    with tempfile.TemporaryDirectory() as tmp:
        store = await SqliteStore.open(Path(tmp) / "tenure.db", "off")
        try:
            limiter = StoredLimiter(
                store,
                clock,
                defaults.redeem_failures_per_address,
                defaults.redeem_failures_global,
                defaults.redeem_window_seconds,
            )
            return await simulate(networks, addresses, hours, limiter, clock)
        finally:
            await store.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.guessing", description=__doc__)
    p.add_argument("--networks", type=int, default=1000)
    p.add_argument("--addresses", type=int, default=16, help="per network")
    p.add_argument("--hours", type=int, default=2)
    args = p.parse_args(argv)
    defaults = Config()
    checked, refused = asyncio.run(_run(args.networks, args.addresses, args.hours, defaults))
    per_day = checked * 24 / args.hours
    print(
        f"{args.networks} networks x {args.addresses} addresses, {args.hours} h simulated "
        f"(per address {defaults.redeem_failures_per_address}, alarm {defaults.redeem_failures_global}, "
        f"window {defaults.redeem_window_seconds} s)"
    )
    print(f"guesses checked: {checked} ({per_day:,.0f} per day); technicians refused: {refused} of {args.hours}")
    for live in (1, 10, 100):
        days, daily = CODE_SPACE / (live * per_day), per_day * live / CODE_SPACE
        print(f"  {live:>3} live codes: expected {days:,.0f} days to the first hit; {daily:.3%} a day")


if __name__ == "__main__":
    main()
