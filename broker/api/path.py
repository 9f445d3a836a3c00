"""Path parameters and estate scoping."""

from __future__ import annotations

import re

from aiohttp import web

from broker.api.http import authenticate
from broker.errors import NotFound
from broker.principal import Principal

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
