"""The broker client's error mapping: retryable versus final, never a raw aiohttp error."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from agent.client import BrokerClient
from agent.errors import BrokerRefused, BrokerUnavailable
from shared.secret import Secret
from tests.agent.harness import LT, LiveBroker


@pytest.fixture
async def odd_server() -> AsyncIterator[str]:
    """A server that answers like a broken proxy in front of the broker would."""

    async def overloaded(request: web.Request) -> web.Response:
        return web.json_response({"code": "storage_unavailable"}, status=503, headers={"Retry-After": "7"})

    async def html(request: web.Request) -> web.Response:
        return web.Response(text="<html>captive portal</html>", content_type="text/html")

    async def slow(request: web.Request) -> web.Response:
        import asyncio

        await asyncio.sleep(2)
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/v1/leases/overloaded/renew", overloaded)
    app.router.add_post("/v1/leases/html/renew", html)
    app.router.add_post("/v1/leases/slow/renew", slow)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def test_5xx_garbled_and_slow_answers_are_retryable(odd_server: str) -> None:
    client = BrokerClient(odd_server, timeout=0.5)
    try:
        with pytest.raises(BrokerUnavailable) as caught:
            await client.renew(Secret("tnr_srv_x"), "overloaded")
        assert caught.value.retry_after == 7.0 and "503" in caught.value.reason
        with pytest.raises(BrokerUnavailable, match="unexpected answer"):
            await client.renew(Secret("tnr_srv_x"), "html")
        with pytest.raises(BrokerUnavailable, match=r"no answer within 0\.5 s"):
            await client.renew(Secret("tnr_srv_x"), "slow")
    finally:
        await client.close()


async def test_refusals_carry_the_problem_code(live_broker: LiveBroker) -> None:
    client = BrokerClient(live_broker.url)
    try:
        with pytest.raises(BrokerRefused) as caught:
            await client.acquire(Secret("tnr_srv_nobody"), "ENC-1", LT, 1)
        assert (caught.value.status, caught.value.code) == (401, "unauthenticated")
        with pytest.raises(BrokerRefused) as caught:
            await client.enroll("00000001", "enc-host-7", "server")
        assert caught.value.code == "auth_code_invalid"
    finally:
        await client.close()


async def test_https_needs_a_trusted_certificate(odd_server: str) -> None:
    # An http server spoken to as https: the handshake fails, and that is retryable.
    client = BrokerClient(odd_server.replace("http://", "https://"), timeout=2)
    try:
        with pytest.raises(BrokerUnavailable):
            await client.keys()
    finally:
        await client.close()


@pytest.fixture
async def redirecting_server() -> AsyncIterator[tuple[str, list[str]]]:
    """A server whose API answers 302/307 to a path that would answer well, and records
    every request that reaches that path (with any token it carried)."""
    reached: list[str] = []

    async def redirect(request: web.Request) -> web.Response:
        # 307 keeps the method and body: what a POST with a token would be sent on with.
        status = 307 if request.method == "POST" else 302
        return web.Response(status=status, headers={"Location": "/elsewhere" + request.path})

    async def elsewhere(request: web.Request) -> web.Response:
        reached.append(f"{request.method} {request.path} {request.headers.get('Authorization', '')}")
        return web.json_response({"keys": []})

    app = web.Application()
    app.router.add_route("*", "/v1/{tail:.*}", redirect)
    app.router.add_route("*", "/elsewhere/{tail:.*}", elsewhere)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", reached
    await runner.cleanup()


async def test_redirects_are_never_followed(redirecting_server: tuple[str, list[str]]) -> None:
    url, reached = redirecting_server
    client = BrokerClient(url)
    try:
        with pytest.raises(BrokerUnavailable) as caught:
            await client.keys()
        assert str(caught.value) == (
            f"cannot reach the broker at {url}: it answered with a redirect (HTTP 302 to /elsewhere/v1/keys); "
            "the agent follows no redirects: give the broker's own URL"
        )
        # A redirect that would carry the server token elsewhere stops here too.
        with pytest.raises(BrokerUnavailable, match=r"redirect \(HTTP 307 to /elsewhere/v1/leases/lse_1/renew\)"):
            await client.renew(Secret("tnr_srv_secret"), "lse_1")
    finally:
        await client.close()
    assert reached == []
