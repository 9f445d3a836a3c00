"""Idempotency-Key on every POST of the admin API: a retry returns the first answer and
changes nothing; the same key for another request is refused; secrets rest encrypted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from broker.api.http import ROUTES
from tests.broker.estate_kit import Estate, assert_problem, base, estate, pools, raw
from tests.conftest import DAY, Broker


def db_rows(broker: Broker, sql: str) -> list[Any]:
    return broker.db.rows(sql)


def db_bytes(broker: Broker) -> bytes:
    return broker.db.dump()


async def post(broker: Broker, path: str, token: str, body: Any, key: str) -> tuple[int, Any, dict[str, str]]:
    r = await raw(broker, "POST", path, token, json.dumps(body), headers={"Idempotency-Key": key})
    return r.status, r.json(), r.headers


async def test_every_admin_post_declares_idempotency() -> None:
    posts = [r for r in ROUTES if r.method == "POST" and r.path.startswith("/v1/estates")]
    assert len(posts) >= 6
    assert all(r.idempotent for r in posts), [r.path for r in posts if not r.idempotent]


async def test_create_estate_retry_returns_same_answer_and_creates_one(broker: Broker, tmp_path: Path) -> None:
    body = {"name": "Acme", "admin_name": "Alice"}
    s1, first, _ = await post(broker, "/v1/estates", broker.operator, body, "order-42")
    s2, second, h2 = await post(broker, "/v1/estates", broker.operator, body, "order-42")
    assert (s1, s2) == (201, 201)
    assert first == second
    assert h2["Idempotency-Key"] == "order-42"
    assert db_rows(broker, "SELECT COUNT(*) FROM estates") == [(1,)]
    assert db_rows(broker, "SELECT COUNT(*) FROM events WHERE action = 'estate.created'") == [(1,)]
    # The replayed token works: it is the one token that exists.
    await broker.call("GET", "/v1/me", second["admin_token"], status=200)
    # A different key makes another estate.
    s3, third, _ = await post(broker, "/v1/estates", broker.operator, body, "order-43")
    assert s3 == 201 and third["id"] != first["id"]


async def test_secrets_in_stored_answers_are_not_in_clear(broker: Broker, tmp_path: Path) -> None:
    _, est, _ = await post(broker, "/v1/estates", broker.operator, {"name": "A", "admin_name": "B"}, "k1")
    _, purchase, _ = await post(
        broker,
        f"/v1/estates/{est['id']}/purchases",
        broker.operator,
        {"sales_order": "SO-1", "licence_type": "one-in-one-out", "quantity": 3, "expires_at": "2028-01-01T00:00:00Z"},
        "k2",
    )
    _, code, _ = await post(
        broker, f"/v1/estates/{est['id']}/pools/{est['default_pool_id']}/auth-codes", est["admin_token"], {}, "k3"
    )
    _, admin, _ = await post(broker, f"/v1/estates/{est['id']}/admins", est["admin_token"], {"name": "C"}, "k4")
    assert purchase["sales_order"] == "SO-1"
    assert db_rows(broker, "SELECT COUNT(*) FROM idempotency") == [(4,)]
    blob = db_bytes(broker)
    for secret in (est["admin_token"], admin["token"], code["code"], broker.operator):
        assert secret.encode() not in blob, secret[:8]
    # The keys themselves are not stored either.
    hashes = [row[0] for row in db_rows(broker, "SELECT key_hash FROM idempotency")]
    assert len(hashes) == 4 and all(len(h) == 32 for h in hashes)


async def test_same_key_different_body_is_422_and_changes_nothing(broker: Broker, tmp_path: Path) -> None:
    await post(broker, "/v1/estates", broker.operator, {"name": "A", "admin_name": "B"}, "k")
    s, body, _ = await post(broker, "/v1/estates", broker.operator, {"name": "A2", "admin_name": "B"}, "k")
    assert s == 422 and body["code"] == "idempotency_key_reused"
    assert db_rows(broker, "SELECT name FROM estates") == [("A",)]


async def test_same_key_on_another_route_is_422(broker: Broker) -> None:
    est = await estate(broker)
    await broker.purchase(est.id, quantity=5)
    s, _, _ = await post(broker, f"{base(est)}/pools", est.admin, {"name": "P"}, "same")
    assert s == 201
    s, body, _ = await post(broker, f"{base(est)}/pools/{est.default_pool}/auth-codes", est.admin, {}, "same")
    assert s == 422 and body["code"] == "idempotency_key_reused"


async def test_keys_are_scoped_to_the_callers_token(broker: Broker) -> None:
    a, b = await estate(broker, "A"), await estate(broker, "B")
    s1, p1, _ = await post(broker, f"{base(a)}/pools", a.admin, {"name": "P"}, "shared-key")
    s2, p2, _ = await post(broker, f"{base(b)}/pools", b.admin, {"name": "P"}, "shared-key")
    assert (s1, s2) == (201, 201) and p1["id"] != p2["id"]
    assert "P" in await pools(broker, b)


async def test_pool_create_retry_creates_one_pool_and_moves_once(broker: Broker) -> None:
    est = await estate(broker)
    p = await broker.purchase(est.id, quantity=10)
    body = {"name": "Paris", "moves": [{"purchase_id": p["id"], "count": 4}]}
    s1, first, _ = await post(broker, f"{base(est)}/pools", est.admin, body, "pool-1")
    s2, second, _ = await post(broker, f"{base(est)}/pools", est.admin, body, "pool-1")
    assert (s1, s2) == (201, 201) and first == second
    views = await pools(broker, est)
    assert list(views) == ["Default Pool", "Paris"]
    assert (views["Default Pool"]["allocated"], views["Paris"]["allocated"]) == (6, 4)
    created = await broker.call("GET", f"{base(est)}/events?action=pool.created", est.admin, status=200)
    moved = await broker.call("GET", f"{base(est)}/events?action=licences.moved", est.admin, status=200)
    assert (len(created["items"]), len(moved["items"])) == (1, 1)


async def test_move_retry_moves_once(broker: Broker) -> None:
    est = await estate(broker)
    p = await broker.purchase(est.id, quantity=10)
    paris = await broker.call("POST", f"{base(est)}/pools", est.admin, {"name": "Paris"}, 201)
    body = {"from_pool": est.default_pool, "to_pool": paris["id"], "items": [{"purchase_id": p["id"], "count": 3}]}
    results = [await post(broker, f"{base(est)}/moves", est.admin, body, "mv") for _ in range(3)]
    assert {r[0] for r in results} == {201}
    assert results[0][1] == results[1][1] == results[2][1]
    assert (await pools(broker, est))["Paris"]["allocated"] == 3


async def test_code_retry_returns_the_same_code_and_makes_one(broker: Broker) -> None:
    est = await estate(broker)
    await broker.purchase(est.id, quantity=10)
    url = f"{base(est)}/pools/{est.default_pool}/auth-codes"
    _, c1, _ = await post(broker, url, est.admin, {"ttl_seconds": 3600}, "code-1")
    _, c2, _ = await post(broker, url, est.admin, {"ttl_seconds": 3600}, "code-1")
    assert c1 == c2
    listed = await broker.call("GET", f"{base(est)}/auth-codes", est.admin, status=200)
    assert [c["id"] for c in listed["items"]] == [c1["id"]]


async def test_purchase_and_admin_retries(broker: Broker, tmp_path: Path) -> None:
    est = await estate(broker)
    body = {
        "sales_order": "SO-1",
        "licence_type": "one-in-one-out",
        "quantity": 3,
        "expires_at": "2028-01-01T00:00:00Z",
    }
    for _ in range(2):
        await post(broker, f"{base(est)}/purchases", broker.operator, body, "pur")
        await post(broker, f"{base(est)}/admins", est.admin, {"name": "Bob"}, "adm")
    assert db_rows(broker, "SELECT COUNT(*) FROM purchases") == [(1,)]
    assert (await pools(broker, est))["Default Pool"]["allocated"] == 3
    admins = await broker.call("GET", f"{base(est)}/admins", est.admin, status=200)
    assert [a["name"] for a in admins["items"]] == ["Alice", "Bob"]


async def test_a_refused_request_is_not_remembered_as_done(broker: Broker) -> None:
    est = await estate(broker)
    url = f"{base(est)}/pools/{est.default_pool}/auth-codes"
    s, body, _ = await post(broker, url, est.admin, {}, "early")
    assert (s, body["code"]) == (409, "no_valid_licences")
    await broker.purchase(est.id, quantity=1)
    s, body, _ = await post(broker, url, est.admin, {}, "early")
    assert s == 201 and len(body["code"]) == 8


async def test_keys_expire_after_a_day(broker: Broker, tmp_path: Path) -> None:
    body = {"name": "A", "admin_name": "B"}
    _, first, _ = await post(broker, "/v1/estates", broker.operator, body, "daily")
    broker.clock.advance(DAY - 1)
    _, again, _ = await post(broker, "/v1/estates", broker.operator, body, "daily")
    assert again == first
    broker.clock.advance(1)
    _, later, _ = await post(broker, "/v1/estates", broker.operator, body, "daily")
    assert later["id"] != first["id"]
    assert db_rows(broker, "SELECT COUNT(*) FROM estates") == [(2,)]


async def test_without_a_key_each_post_acts(broker: Broker, tmp_path: Path) -> None:
    for _ in range(2):
        await broker.call("POST", "/v1/estates", broker.operator, {"name": "A", "admin_name": "B"}, 201)
    assert db_rows(broker, "SELECT COUNT(*) FROM estates") == [(2,)]
    assert db_rows(broker, "SELECT COUNT(*) FROM idempotency") == [(0,)]


@pytest.mark.parametrize("key", ["", "x" * 256])
async def test_bad_keys_are_refused(broker: Broker, key: str) -> None:
    r = await raw(
        broker,
        "POST",
        "/v1/estates",
        broker.operator,
        json.dumps({"name": "A", "admin_name": "B"}),
        headers={"Idempotency-Key": key},
    )
    assert_problem(r, 400, "validation_error")


async def test_replay_survives_a_restart(broker: Broker, aiohttp_client: Any, config_factory: Any) -> None:
    from broker.app import create_app

    est: Estate = await estate(broker)
    await broker.purchase(est.id, quantity=2)
    body = {"name": "Paris"}
    _, first, _ = await post(broker, f"{base(est)}/pools", est.admin, body, "restart")
    await broker.client.close()
    client = await aiohttp_client(create_app(config_factory()))
    resp = await client.post(
        f"{base(est)}/pools",
        data=json.dumps(body),
        headers={"Authorization": f"Bearer {est.admin}", "Idempotency-Key": "restart"},
    )
    assert resp.status == 201 and await resp.json() == first


# -- what a copy of the database gives away ------------------------------------

ANSWER_INFOS = (b"tenure-idempotency", b"tenure-idempotency-answer")


def _decrypts(secret: bytes, row: tuple[bytes, bytes, bytes]) -> bool:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key_hash, nonce, body = row
    try:
        AESGCM(secret).decrypt(nonce, body, key_hash)
    except InvalidTag:
        return False
    return True


def _old_secret(key: str, token_digest: bytes) -> bytes:
    """The answer key before: HKDF of the idempotency key, salted with the token's hash."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(hashes.SHA256(), 64, salt=token_digest, info=b"tenure-idempotency").derive(key.encode())[32:]


def _guesses(key: str, digests: list[bytes]) -> list[bytes]:
    """Every answer key an attacker can make from the database and a guessed idempotency key."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    out = [_old_secret(key, d) for d in digests]
    for digest in digests:
        for stand_in in (digest, digest.hex().encode(), b""):  # the hash in place of the token
            for info in ANSWER_INFOS:
                for ikm in (stand_in + b"\x00" + key.encode(), key.encode(), stand_in):
                    out.append(HKDF(hashes.SHA256(), 32, salt=digest, info=info).derive(ikm))
    return out


async def test_a_copy_of_the_database_and_a_guessed_key_recover_no_token(broker: Broker, tmp_path: Path) -> None:
    from broker.idempotency import IdempotencyKey
    from broker.ids import token_hash

    est = await estate(broker)
    _, added, _ = await post(broker, f"{base(est)}/admins", est.admin, {"name": "Bob"}, "paris-1")
    assert added["token"].startswith("tnr_adm_")
    rows = db_rows(broker, "SELECT key_hash, nonce, body FROM idempotency")
    digests = [r[0] for r in db_rows(broker, "SELECT token_hash FROM admins UNION SELECT token_hash FROM servers")]
    assert len(rows) == 1 and token_hash(est.admin) in digests
    for secret in _guesses("paris-1", digests):
        assert not _decrypts(secret, rows[0])
    # What does open it: the raw token, which only its holder has.
    real = IdempotencyKey.derive("paris-1", est.admin, token_hash(est.admin), "POST", "/", b"")
    assert _decrypts(real.secret, rows[0])


async def test_a_record_from_before_the_change_is_refused_not_replayed(broker: Broker, tmp_path: Path) -> None:
    import os

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from broker.idempotency import IdempotencyKey
    from broker.ids import token_hash

    est = await estate(broker)
    body = {"name": "Bob"}
    path = f"{base(est)}/admins"
    # A record as the broker wrote it before: its answer sealed under the old key.
    new = IdempotencyKey.derive("old-1", est.admin, token_hash(est.admin), "POST", path, json.dumps(body).encode())
    nonce = os.urandom(12)
    sealed = AESGCM(_old_secret("old-1", token_hash(est.admin))).encrypt(nonce, b'{"id":"adm_x"}', new.lookup)
    broker.db.run(
        "INSERT INTO idempotency VALUES (?, ?, 201, ?, ?, ?)",
        (new.lookup, new.request_hash, nonce, sealed, int(broker.clock.now())),
    )
    status, problem, _ = await post(broker, path, est.admin, body, "old-1")
    assert (status, problem["code"]) == (422, "idempotency_key_reused")
    admins = await broker.call("GET", path, est.admin, status=200)
    assert [a["name"] for a in admins["items"]] == ["Alice"]


async def test_console_session_retries_replay_and_another_session_is_refused(broker: Broker) -> None:
    from broker.console import COOKIE

    est = await estate(broker)

    async def sign_in() -> dict[str, str]:
        r = await broker.client.post("/console/session", json={"token": est.admin})
        assert r.status == 200
        return {"Cookie": f"{COOKIE}={r.cookies[COOKIE].value}", "X-CSRF-Token": (await r.json())["csrf_token"]}

    session = await sign_in()
    answers = []
    for _ in range(2):
        r = await raw(
            broker, "POST", f"{base(est)}/admins", None, '{"name": "Bob"}', {**session, "Idempotency-Key": "c"}
        )
        answers.append((r.status, r.json()))
    assert answers[0][0] == 201 and answers[0] == answers[1]
    other = await sign_in()
    r = await raw(broker, "POST", f"{base(est)}/admins", None, '{"name": "Bob"}', {**other, "Idempotency-Key": "c"})
    assert_problem(r, 422, "idempotency_key_reused")
    admins = await broker.call("GET", f"{base(est)}/admins", est.admin, status=200)
    assert [a["name"] for a in admins["items"]] == ["Alice", "Bob"]


async def test_the_purge_forgets_old_records_and_outlives_a_failed_round(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    from broker import reaper
    from broker.services import SERVICES

    svc = broker.client.app[SERVICES]
    await post(broker, "/v1/estates", broker.operator, {"name": "A", "admin_name": "B"}, "old")
    broker.clock.advance(DAY + 1)
    await post(broker, "/v1/estates", broker.operator, {"name": "C", "admin_name": "D"}, "new")
    await reaper.purge_idempotency(svc)
    assert db_rows(broker, "SELECT COUNT(*) FROM idempotency") == [(1,)]
    # A round that fails (SQLite: the write refused; PostgreSQL: an error the store does
    # not know) is logged, raises nothing, and the next round purges again.
    broker.db.run("ALTER TABLE idempotency RENAME TO idempotency_away")
    await reaper.purge_idempotency(svc)
    assert "idempotency purge" in caplog.text
    broker.db.run("ALTER TABLE idempotency_away RENAME TO idempotency")
    broker.clock.advance(DAY + 1)
    await reaper.purge_idempotency(svc)
    assert db_rows(broker, "SELECT COUNT(*) FROM idempotency") == [(0,)]
