"""Token → principal lookups; a server token's is cached, so that a renewal's auth costs
no database hop.

An admin's token is looked up on every request: admin requests are few, and a removed
admin must lose access at once in every process of the broker (its workers) and every
replica, not after a cache's life in the ones that did not remove it. A token that
matched nothing is remembered a few seconds (no new token can have been asked for
before it existed). A server token's entry lives minutes: agents renew every few minutes
or hours, so a short life would make almost every renewal pay a database read, and
nothing is lost by it, because acquire, renew and release re-read the server's binding
inside their own transaction (``leases._binding``) and refuse a removed server there, and
the event stream looks the token up afresh when it opens (``fresh``); a removal in this
process drops the entry at once.
"""

from __future__ import annotations

from collections import OrderedDict

from broker.clock import Clock
from broker.principal import Principal
from broker.store.base import Store, Tx

TTL_SECONDS = 5.0  # tokens that matched nothing
SERVER_TTL_SECONDS = 300.0
MAX_ENTRIES = 200_000


class PrincipalCache:
    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self._entries: OrderedDict[bytes, tuple[float, Principal | None]] = OrderedDict()

    async def resolve(self, digest: bytes) -> Principal | None:
        now = self.clock.now()
        hit = self._entries.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        principal = await self.store.read(lambda tx: lookup(tx, digest))
        if principal is not None and principal.kind != "server":
            return principal  # an admin: read again next time (see the module's docstring)
        ttl = SERVER_TTL_SECONDS if principal is not None else TTL_SECONDS
        self._entries[digest] = (now + ttl, principal)
        self._entries.move_to_end(digest)
        while len(self._entries) > MAX_ENTRIES:
            self._entries.popitem(last=False)
        return principal

    async def fresh(self, digest: bytes) -> Principal | None:
        """``resolve`` from the database, never the cache (and the cache put right): for
        what a server's cached binding would get wrong, such as the event stream, which
        follows the server's pool for as long as it stays open."""
        self._entries.pop(digest, None)
        return await self.resolve(digest)

    def forget(self, *, admin_id: str | None = None, server_id: str | None = None) -> None:
        for digest, (_, p) in list(self._entries.items()):
            if p is not None and ((admin_id and p.admin_id == admin_id) or (server_id and p.server_id == server_id)):
                del self._entries[digest]


def lookup(tx: Tx, digest: bytes) -> Principal | None:
    admin = tx.one("admin_by_token", token_hash=digest)
    if admin is not None:
        return Principal(
            kind="admin",
            token_hash=digest,
            estate_id=admin["estate_id"],
            admin_id=admin["admin_id"],
            name=admin["name"],
            primary=bool(admin["is_primary"]),
        )
    server = tx.one("server_by_token", token_hash=digest)
    if server is not None:
        return Principal(
            kind="server",
            token_hash=digest,
            estate_id=server["estate_id"],
            server_id=server["server_id"],
            name=server["name"],
            pool_id=server["pool_id"],
        )
    return None
