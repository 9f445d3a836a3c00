"""A data directory of the old layout (keys as files) upgrades in place at start: its
keys are imported into the database, sealed, once, and every token and code still works."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from broker import keymaterial
from broker.app import create_app
from broker.keyfiles import KeyFileError
from broker.services import SERVICES
from shared import jws
from shared.secretfile import write_secret
from tests.broker.estate_kit import base, enroll, estate, lease
from tests.broker.test_backup import start_up
from tests.conftest import Broker

# the key files of an old SQLite data directory.
pytestmark = pytest.mark.sqlite_only

Client = Callable[..., Awaitable[TestClient[Any, Any]]]


async def _old_layout(broker: Broker, data: Path) -> None:
    """Turn a stopped broker's data directory into what the old code left: each signing
    key a PEM file ``keys/key-<created>-<kid prefix>.pem`` and the code key ``code-key``
    (both mode 0600, as ``write_secret`` wrote them), no secret key, schema version 2
    (so no audit chain either)."""
    svc = broker.client.app[SERVICES]
    keys = svc.keyring.keys
    code_key = svc.code_key
    await broker.client.close()
    (data / "keys").mkdir(mode=0o700)
    for stored in keys:
        write_secret(data / "keys" / f"key-{stored.created}-{stored.key.kid[:12]}.pem", stored.key.to_pem())
    write_secret(data / "code-key", code_key)
    (data / "secret-key").unlink()
    conn = sqlite3.connect(data / "tenure.db")
    for table in ("key_material", "console_sessions", "redemption_attempts", "health"):  # versions 3 to 5
        conn.execute(f"DROP TABLE {table}")
    for column in ("prev_hash", "hash"):  # version 6
        conn.execute(f"ALTER TABLE events DROP COLUMN {column}")
    for table in ("stream_events", "stream_horizon"):  # the agents' event stream, later still
        conn.execute(f"DROP TABLE {table}")
    for table in ("encoder_windows", "soft_locks", "server_limits"):  # the licence policies
        conn.execute(f"DROP TABLE {table}")
    for column in ("soft_lock_hardware", "soft_lock_container"):
        conn.execute(f"ALTER TABLE pools DROP COLUMN {column}")
    conn.execute("PRAGMA user_version = 2")
    conn.close()


async def test_an_old_data_directory_upgrades_in_place_and_its_tokens_and_codes_still_work(
    aiohttp_client: Client, config_factory: Callable[..., Any], broker: Broker
) -> None:
    data = config_factory().data_dir
    est = await estate(broker)
    await broker.purchase(est.id, quantity=10)
    server = await enroll(broker, est, est.default_pool)
    first = await lease(broker, server["server_token"], "ENC-1", 2)
    code = await broker.call("POST", f"{base(est)}/pools/{est.default_pool}/auth-codes", est.admin, {}, 201)
    jwks = await broker.call("GET", "/v1/keys", status=200)
    await _old_layout(broker, data)
    pem_files = {p.name: p.read_bytes() for p in (data / "keys").iterdir()}
    code_key = (data / "code-key").read_bytes()

    again = Broker(await aiohttp_client(create_app(config_factory())), broker.operator, broker.clock)
    # The same public keys, so tokens signed before verify; the same code key, so the code
    # made before redeems; server tokens were never keys, and renew as before.
    assert await again.call("GET", "/v1/keys", status=200) == jwks
    assert jws.verify(first["token"], jws.keys_from_jwks(jwks), now=broker.clock.now())["lid"] == first["id"]
    renewed = await again.call("POST", f"/v1/leases/{first['id']}/renew", server["server_token"], {}, 200)
    assert jws.unverified_header(renewed["token"])["kid"] == jws.unverified_header(first["token"])["kid"]
    await again.call("POST", "/v1/enroll", None, {"code": code["code"], "name": "enc-host-2"}, 201)
    # The files were moved aside, a secret key was made, and the rows hold the same keys.
    assert not (data / "keys").exists() and not (data / "code-key").exists()
    assert {p.name: p.read_bytes() for p in (data / "keys.imported").iterdir()} == pem_files
    assert (data / "code-key.imported").read_bytes() == code_key
    assert (data / "secret-key").stat().st_mode & 0o777 == 0o600
    svc = again.client.app[SERVICES]
    assert svc.code_key == code_key
    before = await svc.store.read(keymaterial.all_rows)
    assert len(before) == len(pem_files) + 1
    await again.client.close()

    # A second start imports nothing and changes nothing.
    third = Broker(await aiohttp_client(create_app(config_factory())), broker.operator, broker.clock)
    assert await third.call("GET", "/v1/keys", status=200) == jwks
    assert await third.client.app[SERVICES].store.read(keymaterial.all_rows) == before
    await third.client.close()

    # A crash after the import's commit but before the files moved: they are found again,
    # imported to no effect, and moved aside.
    shutil.copytree(data / "keys.imported", data / "keys")
    shutil.copy(data / "code-key.imported", data / "code-key")
    fourth = Broker(await aiohttp_client(create_app(config_factory())), broker.operator, broker.clock)
    assert await fourth.client.app[SERVICES].store.read(keymaterial.all_rows) == before
    assert not (data / "keys").exists() and not (data / "code-key").exists()


async def test_a_code_key_file_that_differs_from_the_stored_one_is_refused(
    config_factory: Callable[..., Any], broker: Broker
) -> None:
    data = config_factory().data_dir
    await broker.client.close()
    write_secret(data / "code-key", b"x" * 32)
    with pytest.raises(KeyFileError, match="code-key differs"):
        await start_up(config_factory())
    assert (data / "code-key").read_bytes() == b"x" * 32  # left where it was
