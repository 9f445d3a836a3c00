"""Who is asking: the client's address, through the reverse proxies the operator trusts.

``X-Forwarded-For`` is believed only when the TCP peer is inside one of the
``trusted_proxies`` networks; the client is then the rightmost address of the header
that is not itself a trusted proxy. Everything left of that entry was written by
whoever the client is, so it is never read: a client cannot choose its own address, and
hosts behind one proxy stay apart. A malformed entry stops the walk at the nearest
address a trusted proxy reported, which is never one the client picked.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from aiohttp import web

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_HOPS = 32  # a longer chain is no proxy set-up; stop there rather than spend time on it


def parse_ip(text: str) -> IPAddress | None:
    """``text`` as an address (IPv4-mapped IPv6 as IPv4, ``[v6]`` accepted), else None."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        found = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(found, ipaddress.IPv6Address) and found.ipv4_mapped is not None:
        return found.ipv4_mapped
    return found


def is_trusted(address: IPAddress | None, proxies: Sequence[IPNetwork]) -> bool:
    return address is not None and any(address in net for net in proxies)


def forwarded_client(peer: IPAddress, forwarded: Iterable[str], proxies: Sequence[IPNetwork]) -> IPAddress:
    """The client behind ``peer`` (a trusted proxy), from its ``X-Forwarded-For`` entries."""
    entries = [e for line in forwarded for e in line.split(",")]
    reporter = peer  # the nearest address a trusted proxy vouched for
    for entry in reversed(entries[-MAX_HOPS:]):
        found = parse_ip(entry)
        if found is None:
            return reporter  # garbage: believe nothing further left
        if not is_trusted(found, proxies):
            return found
        reporter = found
    return reporter


def client_ip(request: web.Request, proxies: Sequence[IPNetwork]) -> IPAddress | None:
    """The client's address, or None when the peer is not an IP connection (a Unix socket)."""
    peer = parse_ip(request.remote or "")
    if peer is None or not is_trusted(peer, proxies):
        return peer
    return forwarded_client(peer, request.headers.getall("X-Forwarded-For", ()), proxies)


def via_trusted_proxy(request: web.Request, proxies: Sequence[IPNetwork]) -> bool:
    """Whether the TCP peer is one of the operator's trusted proxies."""
    return is_trusted(parse_ip(request.remote or ""), proxies)
