"""Lease tokens: verified by PyJWT (an independent implementation), tamper-proof, rotatable."""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient

from broker import keymaterial, reaper, secretkey, signing
from broker.app import create_app
from broker.cli import rotate_keys
from broker.clock import ManualClock
from broker.secretkey import KeySealed, SecretKey, SecretKeyError
from broker.services import SERVICES
from shared import jws
from tests.broker.leasing import ONE, Site, header_of, make_site, ts
from tests.conftest import DAY, Broker

CLAIMS = {"iss", "sub", "lid", "est", "pool", "srv", "lt", "n", "iat", "nbf", "exp"}


async def _jwks(broker: Broker) -> dict[str, Any]:
    body: dict[str, Any] = await broker.call("GET", "/v1/keys", status=200)
    return body


def _jwk_for(jwks: dict[str, Any], token: str) -> dict[str, Any]:
    kid = header_of(token)["kid"]
    return next(k for k in jwks["keys"] if k["kid"] == kid)


def _pyjwt(token: str, jwk: dict[str, Any], **options: Any) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(
        token,
        key=jwt.PyJWK(jwk).key,
        algorithms=["EdDSA"],
        issuer="tenure",
        options={"require": sorted(CLAIMS), **options},
    )
    return claims


def _tamper(token: str, **changes: Any) -> str:
    head, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    forged = base64.urlsafe_b64encode(json.dumps(claims, separators=(",", ":")).encode())
    return f"{head}.{forged.rstrip(b'=').decode()}.{sig}"


def _modes(folder: Path) -> dict[str, int]:
    return {p.name: os.stat(p).st_mode & 0o777 for p in folder.iterdir()}


def _secret_of(config: Any) -> SecretKey:
    """The deployment's secret key: as configured, else the one generated into the data dir."""
    return secretkey.resolve(config, may_generate=False)


async def _live_site(broker: Broker) -> Site:
    # PyJWT checks exp/nbf/iat against the real clock: run the broker at real time.
    broker.clock.set(float(int(time.time())))
    return await make_site(broker, [("SO-1", 4, 365, ONE)])


async def test_pyjwt_verifies_a_lease_token_with_the_published_key(broker: Broker) -> None:
    site = await _live_site(broker)
    lease = await site.acquire("ENC-7", 3, status=201)
    header = header_of(lease["token"])
    assert header["alg"] == "EdDSA"
    jwks = await _jwks(broker)
    jwk = _jwk_for(jwks, lease["token"])
    assert (jwk["kty"], jwk["crv"], jwk["alg"]) == ("OKP", "Ed25519", "EdDSA")
    claims = _pyjwt(lease["token"], jwk)
    assert set(claims) == CLAIMS
    now = int(broker.clock.now())
    assert claims == {
        "iss": "tenure",
        "sub": "ENC-7",
        "lid": lease["id"],
        "est": site.estate_id,
        "pool": site.pool_id,
        "srv": site.server_id,
        "lt": ONE,
        "n": 3,
        "iat": now,
        "nbf": now,
        "exp": ts(lease["expires_at"]),
    }
    # The shared verifier (what the agent uses) agrees.
    assert jws.verify(lease["token"], jws.keys_from_jwks(jwks), now=now) == claims


async def test_renewed_tokens_verify_too(broker: Broker) -> None:
    site = await _live_site(broker)
    lease = await site.acquire("ENC-1", 1, status=201)
    broker.clock.advance(5)
    renewed = await site.renew(lease["id"], status=200)
    assert renewed["token"] != lease["token"]
    claims = _pyjwt(
        renewed["token"], _jwk_for(await _jwks(broker), renewed["token"]), verify_iat=False, verify_nbf=False
    )
    assert claims["lid"] == lease["id"] and claims["exp"] == ts(renewed["expires_at"])
    assert claims["exp"] > ts(lease["expires_at"])


async def test_a_tampered_token_is_refused(broker: Broker) -> None:
    site = await _live_site(broker)
    lease = await site.acquire("ENC-1", 1, status=201)
    jwks = await _jwks(broker)
    jwk = _jwk_for(jwks, lease["token"])
    keys = jws.keys_from_jwks(jwks)
    for forged in (
        _tamper(lease["token"], n=100),
        _tamper(lease["token"], exp=ts(lease["expires_at"]) + 365 * DAY),
        _tamper(lease["token"], sub="ENC-2"),
    ):
        with pytest.raises(jwt.InvalidSignatureError):
            _pyjwt(forged, jwk)
        with pytest.raises(jws.TokenInvalid):
            jws.verify(forged, keys)
    # A signature cut off, or an alg of "none", is refused as well.
    head, payload, _ = lease["token"].split(".")
    with pytest.raises(jws.TokenInvalid):
        jws.verify(f"{head}.{payload}.", keys)
    none_head = (
        base64.urlsafe_b64encode(json.dumps({"alg": "none", "kid": header_of(lease["token"])["kid"]}).encode())
        .rstrip(b"=")
        .decode()
    )
    with pytest.raises(jws.TokenInvalid):
        jws.verify(f"{none_head}.{payload}.", keys)
    # And a token signed by a key the broker never published names an unknown kid.
    stranger = jws.SigningKey.generate()
    with pytest.raises(jws.UnknownKey):
        jws.verify(jws.sign(jwt.decode(lease["token"], options={"verify_signature": False}), stranger), keys)


async def test_an_expired_token_is_refused_by_both(broker: Broker) -> None:
    site = await _live_site(broker)
    lease = await site.acquire("ENC-1", 1, status=201)
    jwks = await _jwks(broker)
    exp = ts(lease["expires_at"])
    with pytest.raises(jws.TokenInvalid):
        jws.verify(lease["token"], jws.keys_from_jwks(jwks), now=exp)
    assert jws.verify(lease["token"], jws.keys_from_jwks(jwks), now=exp - 1)["exp"] == exp


async def test_keys_rotate_without_restart_and_old_keys_stay_published(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    config_factory: Callable[..., Any],
    clock: ManualClock,
    operator_token: str,
) -> None:
    config = config_factory()
    broker = Broker(await aiohttp_client(create_app(config)), operator_token, clock)
    site = await _live_site(broker)
    await site.set_lease_seconds(30 * DAY)
    old = await site.acquire("ENC-1", 1, status=201)
    old_kid = header_of(old["token"])["kid"]
    assert [k["kid"] for k in (await _jwks(broker))["keys"]] == [old_kid]

    new_key = await rotate_keys(config)  # as `tenure-broker keys rotate` does, through the database
    # Re-read at the key loop's next round, or at once where the rotation's event reaches
    # the broker first (PostgreSQL's NOTIFY wakes its push hub): the old key stays either way.
    assert [k["kid"] for k in (await _jwks(broker))["keys"]] in ([old_kid], [old_kid, new_key.kid])
    await reaper.reload_keys(broker.client.app[SERVICES])  # the key loop's next round
    assert [k["kid"] for k in (await _jwks(broker))["keys"]] == [old_kid, new_key.kid]

    renewed = await site.renew(old["id"], status=200)
    assert header_of(renewed["token"])["kid"] == new_key.kid
    fresh = await site.acquire("ENC-2", 1, status=201)
    assert header_of(fresh["token"])["kid"] == new_key.kid
    jwks = await _jwks(broker)
    # The old token still verifies offline with the old key, the new ones with the new key.
    assert _pyjwt(old["token"], _jwk_for(jwks, old["token"]))["lid"] == old["id"]
    assert _pyjwt(fresh["token"], _jwk_for(jwks, fresh["token"]))["sub"] == "ENC-2"
    # Enrolment hands out the same key set.
    other = await site.enrol("host-2")
    assert other["keys"] == jwks
    # The old key is kept for as long as a token it signed can live.
    clock.set(ts(old["expires_at"]) - 1)
    assert old_kid in [k["kid"] for k in (await _jwks(broker))["keys"]]
    # Once no token it signed can still be valid, it is withdrawn.
    created = broker.client.app[SERVICES].keyring.keys[-1].created
    clock.set(created + signing.MAX_LEASE_SECONDS + 3600)
    assert [k["kid"] for k in (await _jwks(broker))["keys"]] == [new_key.kid]


async def test_the_database_holds_no_key_material_in_clear(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    config_factory: Callable[..., Any],
    clock: ManualClock,
    operator_token: str,
) -> None:
    config = config_factory()
    broker = Broker(await aiohttp_client(create_app(config)), operator_token, clock)
    await rotate_keys(config)
    svc = broker.client.app[SERVICES]
    await reaper.reload_keys(svc)
    keys = svc.keyring.keys
    assert len(keys) == 2 and keys[0].key.kid != keys[1].key.kid
    await svc.store.close()  # every page in the database file itself, none left in the WAL
    on_disk = broker.db.dump()
    given = config.secret_key or (config.data_dir / "secret-key").read_text()
    secret = base64.b64decode(given)
    for key in keys:
        raw = key.key.private.private_bytes_raw()
        assert raw not in on_disk and key.key.to_pem() not in on_disk
        assert key.key.kid.encode() in on_disk  # the row is there, sealed
    assert svc.code_key not in on_disk and secret not in on_disk
    assert b"PRIVATE KEY" not in on_disk
    assert not (config.data_dir / "keys").exists() and not (config.data_dir / "code-key").exists()
    if config.database is None:  # generated into the data directory, for SQLite alone
        assert os.stat(config.data_dir / "secret-key").st_mode & 0o777 == 0o600


async def test_signing_keys_survive_a_restart(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    config_factory: Callable[..., Any],
    clock: ManualClock,
    operator_token: str,
) -> None:
    config = config_factory()
    first = Broker(await aiohttp_client(create_app(config)), operator_token, clock)
    before = await _jwks(first)
    await first.client.close()
    second = Broker(await aiohttp_client(create_app(config)), operator_token, clock)
    assert await _jwks(second) == before


async def test_only_the_canonical_spelling_of_a_token_verifies(broker: Broker) -> None:
    site = await _live_site(broker)
    lease = await site.acquire("ENC-1", 1, status=201)
    keys = jws.keys_from_jwks(await _jwks(broker))
    head, payload, sig = lease["token"].split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    # A 64-byte signature leaves 4 unused bits in its last character: these spell the
    # same bytes, and a lax decoder would accept them.
    same = [
        c
        for c in alphabet
        if c != sig[-1] and base64.urlsafe_b64decode(sig[:-1] + c + "==") == base64.urlsafe_b64decode(sig + "==")
    ]
    assert same
    for variant in (
        f"{head}.{payload}.{sig}!!!!",
        f"{head}.{payload}.{sig}==",
        f"{head}.{payload}.{sig[:-1]}{same[0]}",
        f"{head}.{payload}.{sig}\n",
        f"{head}.{payload}=.{sig}",
    ):
        with pytest.raises(jws.TokenInvalid):
            jws.verify(variant, keys)
    assert jws.verify(lease["token"], keys)["lid"] == lease["id"]


async def test_a_key_that_does_not_open_does_not_stop_later_rotations(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    config_factory: Callable[..., Any],
    clock: ManualClock,
    operator_token: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = config_factory()
    broker = Broker(await aiohttp_client(create_app(config)), operator_token, clock)
    svc = broker.client.app[SERVICES]
    first = [k["kid"] for k in (await _jwks(broker))["keys"]]
    # A key sealed under another deployment's secret key reaches the database (a row copied
    # from elsewhere): it cannot be opened, so it is never used, and reloads say so.
    stranger = SecretKey(os.urandom(32), "elsewhere")
    alien = await svc.store.write(partial(keymaterial.add_signing_key, secret=stranger, now=clock.now() + 5))
    caplog.clear()
    for _ in range(3):  # several reload rounds meet the bad row
        await reaper.reload_keys(svc)
    assert caplog.text.count(f"cannot open the signing key {alien.key.kid}") == 3
    assert [k["kid"] for k in (await _jwks(broker))["keys"]] == first
    # `keys rotate` refuses to add to a database whose keys its secret key cannot all open
    # (it would be the wrong secret key); a key added under the right one is picked up.
    with pytest.raises(SecretKeyError, match=f"does not open the signing key {alien.key.kid}"):
        await rotate_keys(config)
    new_key = await signing.rotate(svc.store, _secret_of(config), clock.now())
    await reaper.reload_keys(svc)
    assert [k["kid"] for k in (await _jwks(broker))["keys"]] == [*first, new_key.kid]
    site = await _live_site(broker)
    lease = await site.acquire("ENC-1", 1, status=201)
    assert header_of(lease["token"])["kid"] == new_key.kid


async def test_a_row_moved_to_another_kid_does_not_open(broker: Broker) -> None:
    svc = broker.client.app[SERVICES]
    rows = await svc.store.read(keymaterial.signing_rows)
    sealed = bytes(rows[0]["sealed"])
    secret = _secret_of(svc.config)
    assert keymaterial.open_signing_key(secret, rows[0]).key.kid == rows[0]["kid"]
    for moved in ({**rows[0], "kid": "another"}, {**rows[0], "created": rows[0]["created"] + 1}):
        with pytest.raises(KeySealed):
            keymaterial.open_signing_key(secret, moved)
    with pytest.raises(KeySealed):
        secret.open("code", rows[0]["kid"], rows[0]["created"], sealed)
