"""Eight-digit authentication codes that bind a server or a domain to a pool.

A code is stored only as HMAC-SHA256 under a key kept in the data directory (not in
the database): a plain hash of eight digits is reversed in seconds. A code's first seven
digits are drawn uniformly with ``secrets`` and the eighth is their Damm check digit
(``shared.codes``); codes are unique among live codes and used at most once.

The broker refuses a code whose check digit is wrong exactly as any wrong code: it matches
no code made since codes carried a check digit, so it is unknown, ``403
auth_code_invalid``, and it spends the caller's failure budget like any other wrong code.
The agent refuses such a code itself before sending it, so one that arrives here was not a
technician's typo, and counting it keeps every failure alike; it also keeps the budget
whole for a code made before the check digit, which may end in any digit and is still
redeemed by its stored MAC until it expires (at most 7 days; docs/design.md).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

from broker import audit, paging, pools
from broker.errors import AuthCodeInvalid, Inconsistent, NotFound, NoValidLicences
from broker.ids import new_token, token_hash
from broker.principal import Principal
from broker.store.base import Tx
from broker.webhooks import events as webhook_events
from shared.codes import CODE_DIGITS, normalise_code, with_check_digit
from shared.timefmt import format_ts

INVALID_MESSAGE = (
    "That code is not valid: it may be mistyped, already used, revoked or expired. Ask your admin for a new code."
)


def mac(key: bytes, code: str) -> bytes:
    return hmac.new(key, code.encode("ascii"), hashlib.sha256).digest()


def make(
    tx: Tx,
    now: float,
    actor: Principal,
    key: bytes,
    estate_id: str,
    pool_id: str,
    ttl_seconds: int,
) -> dict[str, Any]:
    pool = pools.get(tx, estate_id, pool_id)
    if tx.one("pool_has_grantable", pool_id=pool_id, now=int(now)) is None:
        raise NoValidLicences(f"Pool {pool['name']!r} holds no valid licence; move licences into it first.")
    expires_at = int(now) + ttl_seconds
    while True:
        code = with_check_digit(f"{secrets.randbelow(10 ** (CODE_DIGITS - 1)):0{CODE_DIGITS - 1}d}")
        code_mac = mac(key, code)
        if tx.one("code_live_by_mac", code_mac=code_mac, now=int(now)) is None:
            break
    code_id = tx.new_id("code")
    tx.run(
        "code_insert",
        id=code_id,
        estate_id=estate_id,
        pool_id=pool_id,
        code_mac=code_mac,
        now=int(now),
        expires_at=expires_at,
        created_by=actor.actor_id or actor.kind,
    )
    audit.record(
        tx,
        now,
        actor,
        estate_id,
        audit.Action.AUTH_CODE_CREATED,
        pool_id=pool_id,
        subject_id=code_id,
        expires_at=format_ts(expires_at),
    )
    return {"id": code_id, "code": code, "pool_id": pool_id, "expires_at": format_ts(expires_at)}


def list_live(
    tx: Tx, now: float, estate_id: str, pool_id: str | None, *, after: str = "", limit: int | None = None
) -> paging.Page:
    """Live codes, oldest first, a page at a time (never their digits)."""
    return paging.fetch(
        tx,
        "codes_live_of_estate",
        lambda r: {
            "id": r["id"],
            "pool_id": r["pool_id"],
            "pool_name": r["pool_name"],
            "created_at": format_ts(r["created_at"]),
            "expires_at": format_ts(r["expires_at"]),
            "created_by": r["created_by"],
        },
        after=after,
        limit=limit,
        estate_id=estate_id,
        now=int(now),
        pool_id=pool_id,
    )


def revoke(tx: Tx, now: float, actor: Principal, estate_id: str, code_id: str) -> None:
    row = tx.one("code_by_id", code_id=code_id, estate_id=estate_id)
    if row is None:
        raise NotFound("No such authentication code in this estate.")
    if tx.run("code_revoke", code_id=code_id):
        audit.record(
            tx, now, actor, estate_id, audit.Action.AUTH_CODE_REVOKED, pool_id=row["pool_id"], subject_id=code_id
        )


def revoke_of_admin(tx: Tx, now: float, actor: Principal, estate_id: str, admin_id: str) -> int:
    """Revoke the live codes ``admin_id`` made, each audited; return how many.

    Called when the admin is removed, in the same transaction: a code outlives neither
    the admin's token nor the trust that admin was given.
    """
    rows = tx.all("codes_live_of_creator", estate_id=estate_id, created_by=admin_id, now=int(now))
    for row in rows:
        tx.run("code_revoke", code_id=row["id"])
        audit.record(
            tx,
            now,
            actor,
            estate_id,
            audit.Action.AUTH_CODE_REVOKED,
            pool_id=row["pool_id"],
            subject_id=row["id"],
            reason="admin_removed",
            admin_id=admin_id,
        )
    return len(rows)


def redeem(tx: Tx, now: float, key: bytes, code: str, name: str, kind: str) -> dict[str, Any]:
    """Use a code once: create the server or domain bound to the code's pool.

    Two hosts racing for one code cannot both win, whichever store runs this and however
    it orders transactions: ``code_use`` is an UPDATE guarded by ``state = 'live'``, so
    only the first changes a row; the second changes none and is refused, and its
    transaction, server row included, is rolled back.

    ``now`` must be read inside the transaction (the caller's store write function), not
    before the request body arrived: a code is live only if it is live when it is used.
    The check digit is not tested here: a code is valid when it matches a live stored code
    (see the module docstring).
    """
    digits = normalise_code(code)
    row = None if digits is None else tx.one("code_live_by_mac", code_mac=mac(key, digits), now=int(now))
    if row is None:
        raise AuthCodeInvalid(INVALID_MESSAGE)
    server_id, token = tx.new_id("srv"), new_token("srv")
    tx.run(
        "server_insert",
        id=server_id,
        estate_id=row["estate_id"],
        pool_id=row["pool_id"],
        name=name,
        kind=kind,
        token_hash=token_hash(token),
        now=int(now),
    )
    if tx.run("code_use", code_id=row["id"], now=int(now), server_id=server_id) != 1:
        raise AuthCodeInvalid(INVALID_MESSAGE)
    names = tx.one("estate_pool_names", pool_id=row["pool_id"])
    if names is None:
        raise Inconsistent(f"the pool {row['pool_id']} of a live code is not there")
    actor = Principal(
        kind="server",
        token_hash=b"",
        estate_id=row["estate_id"],
        server_id=server_id,
        name=name,
        pool_id=row["pool_id"],
    )
    audit.record(
        tx,
        now,
        actor,
        row["estate_id"],
        audit.Action.SERVER_ENROLLED,
        pool_id=row["pool_id"],
        subject_id=server_id,
        name=name,
        kind=kind,
        auth_code_id=row["id"],
    )
    enrolled = {
        "server_id": server_id,
        "name": name,
        "kind": kind,
        "pool_id": row["pool_id"],
        "pool_name": names["pool_name"],
    }
    webhook_events.emit(tx, now, row["estate_id"], webhook_events.SERVER_ENROLLED, enrolled)
    webhook_events.emit(
        tx, now, row["estate_id"], webhook_events.CODE_REDEEMED, {"auth_code_id": row["id"], **enrolled}
    )
    return {
        "server_id": server_id,
        "server_token": token,
        "name": name,
        "kind": kind,
        "estate_id": row["estate_id"],
        "estate_name": names["estate_name"],
        "pool_id": row["pool_id"],
        "pool_name": names["pool_name"],
    }
