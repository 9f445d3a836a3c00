"""Path parameters and estate scoping."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

from aiohttp import web

from broker import estates
from broker.api.http import authenticate, services
from broker.errors import NotFound
from broker.principal import Principal
from broker.store.base import Tx

T = TypeVar("T")

_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def path_id(request: web.Request, name: str) -> str:
    """An id from the path; anything not shaped like an id is simply not found."""
    value = request.match_info[name]
    if not _ID.fullmatch(value):  # fullmatch: ``$`` would let a trailing newline through
        raise NotFound(f"No such {name}.")
    return value


async def estate_scope(request: web.Request) -> tuple[Principal, str]:
    """The caller (operator, or an admin of this estate) and the estate id."""
    principal = await authenticate(request, ("operator", "admin"))
    estate_id = path_id(request, "estate")
    principal.require_estate(estate_id)
    return principal, estate_id


async def read_in_estate(request: web.Request, estate_id: str, fn: Callable[[Tx], T]) -> T:
    """``fn`` in one read of the store, once the estate is known to exist (404 if not), so
    that an empty list of a real estate and an unknown estate never look alike."""

    def read(tx: Tx) -> T:
        estates.get(tx, estate_id)
        return fn(tx)

    return await services(request).store.read(read)
