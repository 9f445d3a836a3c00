"""Where webhooks may be sent: no server-side request forgery.

A webhook URL is chosen by an estate's admin, and the broker POSTs to it from inside the
operator's network: without a guard an admin could make the broker reach its database,
a cloud metadata service (169.254.169.254) or anything else only the broker can reach.
So, unless the operator sets ``webhook_allow_private``:

- the URL must be ``https://`` with a host and no user name or password in it;
- every address the host is, or resolves to, must be globally routable: loopback,
  private (RFC 1918, fc00::/7), link-local, unspecified, multicast, reserved, shared
  (CGNAT, 100.64.0.0/10) and other non-global addresses are refused, as are IPv6
  addresses that embed such an IPv4 address (IPv4-mapped, 6to4, Teredo, NAT64);
- the check is made when the endpoint is created (``400 validation_error``) and again
  at every delivery, after resolving the name, by ``VettedResolver``: the connection
  goes to the very addresses that were checked, so a name that resolves to a public
  address at creation and to a private one later (DNS rebinding) is refused then.

``webhook_allow_private`` admits all addresses and ``http://`` too, for a receiver on
the operator's own network (and for the tests' loopback receiver).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult

from broker.errors import ValidationFailed

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolve = Callable[[str, int], Awaitable[list[str]]]
"""A name and port to the addresses it resolves to (injectable: tests map names)."""

MAX_URL = 2048
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


class AddressRefused(OSError):
    """The destination is not an address webhooks may be sent to; the message says why."""


async def system_resolve(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to, by the system's resolver."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found: list[str] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = str(sockaddr[0])
        if address not in found:
            found.append(address)
    return found


def refusal(address: IPAddress) -> str | None:
    """Why webhooks may not go to ``address`` (a range's name), or None when they may."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo[1] if address.teredo else None)
        if embedded is None and any(address in net for net in _NAT64):  # a NAT64 gateway reaches the IPv4 one
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            reason = refusal(embedded)
            return f"IPv6 embedding a {reason} IPv4 address" if reason else None
    checks = (
        (address.is_unspecified, "unspecified"),
        (address.is_loopback, "loopback"),
        (address.is_link_local, "link-local"),
        (address.is_multicast, "multicast"),
        (isinstance(address, ipaddress.IPv4Address) and address in _CGNAT, "shared (CGNAT)"),
        (address.is_reserved, "reserved"),
        (address.is_private, "private"),
        (not address.is_global, "non-global"),
    )
    for hit, name in checks:
        if hit:
            return name
    return None


def literal(host: str) -> IPAddress | None:
    """``host`` as an IP address when it is one (brackets of an IPv6 URL host removed)."""
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def check_url(url: str, allow_private: bool) -> tuple[str, int]:
    """The (host, port) of a webhook URL, or ``ValidationFailed`` on field ``url``."""

    def bad(message: str) -> ValidationFailed:
        return ValidationFailed([{"field": "url", "message": message}])

    if len(url) > MAX_URL or any(c.isspace() or ord(c) < 0x20 for c in url):
        raise bad(f"must be a URL of at most {MAX_URL} characters, without spaces")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise bad("is not a valid URL") from exc
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes:
        raise bad("must be an https:// URL" if not allow_private else "must be an https:// or http:// URL")
    if not parts.hostname:
        raise bad("has no host")
    if parts.username is not None or parts.password is not None:
        raise bad("must not carry a user name or password (put a secret in the path, or verify the signature)")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


async def vet(url: str, resolve: Resolve, allow_private: bool) -> list[str]:
    """Check ``url`` and every address its host is or resolves to; the addresses.

    Raises ``ValidationFailed`` (field ``url``) naming the refused address and its range.
    """
    host, port = check_url(url, allow_private)
    try:
        return await vetted_addresses(host, port, resolve, allow_private)
    except AddressRefused as exc:
        raise ValidationFailed([{"field": "url", "message": str(exc)}]) from exc


async def vetted_addresses(host: str, port: int, resolve: Resolve, allow_private: bool) -> list[str]:
    """The addresses of ``host``, each allowed; ``AddressRefused`` if any is not, or
    when the name does not resolve."""
    address = literal(host)
    if address is not None:
        addresses = [str(address)]
    else:
        try:
            addresses = await resolve(host, port)
        except OSError as exc:
            raise AddressRefused(f"{host} does not resolve ({exc.strerror or exc})") from exc
        if not addresses:
            raise AddressRefused(f"{host} does not resolve")
    if allow_private:
        return addresses
    for found in addresses:
        parsed = literal(found)
        reason = "not an IP address" if parsed is None else refusal(parsed)
        if reason is not None:
            shown = host if host == found else f"{host} resolves to {found}, which"
            raise AddressRefused(f"{shown} is a {reason} address; webhooks go only to public addresses")
    return addresses


class VettedResolver(AbstractResolver):
    """aiohttp's resolver for deliveries: resolves with ``resolve``, refuses unless every
    address is allowed, and returns exactly those addresses, which aiohttp then connects
    to (so no second lookup can answer differently). IP-literal hosts never reach a
    resolver in aiohttp: the delivery checks those itself (``vetted_addresses``)."""

    def __init__(self, resolve: Resolve, allow_private: bool) -> None:
        self._resolve = resolve
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = await vetted_addresses(host, port, self._resolve, self._allow_private)
        results: list[ResolveResult] = []
        for address in addresses:
            parsed = literal(address)
            af = socket.AF_INET6 if isinstance(parsed, ipaddress.IPv6Address) else socket.AF_INET
            if family not in (socket.AF_UNSPEC, af):
                continue
            results.append(
                ResolveResult(hostname=host, host=address, port=port, family=af, proto=0, flags=socket.AI_NUMERICHOST)
            )
        if not results:
            raise AddressRefused(f"{host} has no address of the family asked for")
        return results

    async def close(self) -> None:
        return None
