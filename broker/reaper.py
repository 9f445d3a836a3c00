"""Background housekeeping: lapse expired leases into the audit log, reload keys, purge
old idempotency records, sample usage. Each loop asks the domain layer, logs, and nothing else."""

from __future__ import annotations

import asyncio
import logging
from functools import partial

from broker import idempotency, leases, usage
from broker.errors import StorageUnavailable
from broker.services import Services
from broker.store.relay import relayed
from shared import words

log = logging.getLogger("tenure.reaper")


async def lapse_loop(svc: Services) -> None:
    while True:
        await asyncio.sleep(svc.config.reaper_interval_seconds)
        await lapse_due(svc)


async def lapse_due(svc: Services) -> None:
    """One round of ``lapse_loop``: lapse a batch of leases past ``exp``. Never raises:
    the loop must outlive any one bad round."""
    try:
        now = svc.clock.now()
        # relayed: under serve --workers on SQLite the writer runs it, as it runs the
        # renewals; a second process taking SQLite's write lock would stall them.
        count = await svc.store.write(relayed(leases.reap, now=now))
        if count:
            log.info("lapsed %s that were neither renewed nor released", words.count(count, "lease"))
    except StorageUnavailable as exc:
        log.warning("lease reaper: %s", exc.detail)
    except Exception:
        log.exception("lease reaper failed; trying again next round")


async def key_loop(svc: Services) -> None:
    while True:
        await asyncio.sleep(svc.config.key_reload_seconds)
        await reload_keys(svc)


async def reload_keys(svc: Services) -> None:
    """One round of ``key_loop``: re-read the signing keys from the store. Never raises:
    the keys in force stay, so that a later rotation is still picked up."""
    try:
        await svc.keyring.reload(svc.clock.now())
    except StorageUnavailable as exc:
        log.warning("cannot reload signing keys from the database: %s", exc.detail)
    except Exception:
        log.exception("cannot reload signing keys from the database")


async def purge_loop(svc: Services) -> None:
    while True:
        await purge_idempotency(svc)
        await asyncio.sleep(3600)


async def purge_idempotency(svc: Services) -> None:
    """One round of ``purge_loop``: forget idempotency records past their day. Never
    raises: one failed round (the database away, or worse) must not end the purging."""
    try:
        await svc.store.write(relayed(idempotency.purge, now=svc.clock.now()))
    except StorageUnavailable as exc:
        log.warning("idempotency purge: %s", exc.detail)
    except Exception:
        log.exception("idempotency purge failed; trying again in an hour")


async def usage_loop(svc: Services) -> None:
    while True:
        await asyncio.sleep(svc.config.usage_check_seconds)
        await sample_usage(svc)


async def sample_usage(svc: Services) -> int:
    """One round of ``usage_loop``: sample every estate whose five-minute round no broker
    has taken yet, one short write each. The number sampled here. Never raises."""
    sampled = 0
    try:
        now = svc.clock.now()
        for estate_id in await svc.store.read(partial(usage.estates_due, now=now)):
            if await svc.store.write(relayed(usage.sample, now=now, estate_id=estate_id)):
                sampled += 1
    except StorageUnavailable as exc:
        log.warning("usage sampler: %s", exc.detail)
    except Exception:
        log.exception("usage sampler failed; trying again next round")
    return sampled
