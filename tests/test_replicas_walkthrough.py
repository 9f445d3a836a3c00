"""Two (and three) real ``tenure-broker serve`` replicas, started at the same moment on one
empty PostgreSQL database, serve the README walkthrough through any of them in any order.

This is issue 12's "done when": nothing a request depends on may live in one process.
Each step goes to the next replica in turn: the estate made through one is bought for
through another, the code made on one is redeemed on another, a lease granted by one is
renewed, grown and released through the others, and all publish the same keys.
Afterwards ``tenure-broker check --database URL`` proves the books.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from itertools import cycle
from pathlib import Path
from typing import Any

import psycopg
import pytest

from shared import jws
from tests.broker import fleet
from tests.broker.test_cli import COMMAND, clean_env
from tests.postgres import TEST_SECRET_KEY
from tests.test_readme import walkthrough

ROOT = Path(__file__).resolve().parents[1]
OPERATOR = "tnr_op_replicas-walkthrough-operator-token-0001"


class Replica(fleet.Replica):
    """One replica (``tests/broker/fleet.py``) with the walkthrough's operator token, started
    at once; ``call`` takes a path on it."""

    def __init__(self, name: str, folder: Path, database: str) -> None:
        super().__init__(name, folder, database, OPERATOR, database_pool_size=4)
        self.log = self.log_path
        self.start()

    def healthy(self) -> bool:
        try:
            return fleet.call(f"{self.url}/healthz", timeout=2)[0] == 200
        except OSError:
            return False

    def call(
        self, method: str, path: str, token: str | None = None, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        return fleet.call(self.url + path, method, token, body, headers, timeout=10)


@pytest.fixture
def replicas(request: pytest.FixtureRequest, tmp_path: Path, empty_database: str) -> Iterator[tuple[Replica, ...]]:
    """Replicas ``a``, ``b`` (and ``c`` when the test's ``order`` names it) launched back to
    back, before any has opened the database, so that all apply the schema and make the
    first keys at once."""
    callspec = getattr(request.node, "callspec", None)
    order = str(callspec.params.get("order", "ab")) if callspec is not None else "ab"
    names = sorted(set(order))
    started = tuple(Replica(name, tmp_path, empty_database) for name in names)
    try:
        deadline = time.monotonic() + 30
        while not all(r.healthy() for r in started):
            for r in started:
                assert r.proc.poll() is None, f"replica {r.name} exited {r.proc.returncode}: {r.log.read_text()}"
            assert time.monotonic() < deadline, "the replicas did not become healthy"
            time.sleep(0.05)
        yield started
    finally:
        codes = [r.stop() for r in started]
    assert codes == [0] * len(started), "a replica did not stop cleanly: " + "".join(r.log.read_text() for r in started)


def schema_applied_once(database: str, logs: list[str]) -> None:
    """Every migration is recorded once, and applied by one replica (the other waited)."""
    with psycopg.connect(database) as conn:
        versions = [int(str(v)) for (v,) in conn.execute("SELECT version FROM tenure_schema ORDER BY version")]
    assert versions == list(range(1, len(versions) + 1)) and versions
    applied = sum(len(re.findall(r"applying schema migration", log)) for log in logs)
    assert applied == len(versions), logs


def check_books(database: str) -> str:
    result = subprocess.run(
        [*COMMAND, "check", "--database", database],
        env=clean_env(TENURE_SECRET_KEY=TEST_SECRET_KEY),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("order", ["ab", "ba", "cab"])
def test_replicas_started_together_serve_the_walkthrough_in_any_order(
    order: str, replicas: tuple[Replica, ...], empty_database: str
) -> None:
    by_name = {r.name: r for r in replicas}
    turn = cycle([by_name[name] for name in order])

    def step(method: str, path: str, token: str | None, body: Any = None, *, status: int, **kw: Any) -> Any:
        replica = next(turn)
        got, answer = replica.call(method, path, token, body, **kw)
        assert got == status, f"{method} {path} on replica {replica.name}: {got} {answer}"
        return answer

    schema_applied_once(empty_database, [r.log.read_text() for r in replicas])

    # The vendor creates an estate and records two purchases.
    estate = step("POST", "/v1/estates", OPERATOR, {"name": "Acme Broadcast", "admin_name": "Alice"}, status=201)
    e, adm = estate["id"], estate["admin_token"]
    p1 = step(
        "POST",
        f"/v1/estates/{e}/purchases",
        OPERATOR,
        {
            "sales_order": "SO-1001",
            "licence_type": "one-in-one-out",
            "quantity": 20,
            "expires_at": "2027-12-31T00:00:00Z",
        },
        status=201,
    )["id"]
    p2 = step(
        "POST",
        f"/v1/estates/{e}/purchases",
        OPERATOR,
        {
            "sales_order": "SO-1002",
            "licence_type": "one-in-one-out",
            "quantity": 10,
            "expires_at": "2028-06-30T00:00:00Z",
        },
        status=201,
    )["id"]

    # The admin makes the Paris pool with 8 + 4 licences; the same request with the same
    # Idempotency-Key, retried through the other replica, is answered the same, once.
    moves = {"name": "Paris", "moves": [{"purchase_id": p1, "count": 8}, {"purchase_id": p2, "count": 4}]}
    pool = step("POST", f"/v1/estates/{e}/pools", adm, moves, status=201, headers={"Idempotency-Key": "paris-1"})
    again = step("POST", f"/v1/estates/{e}/pools", adm, moves, status=201, headers={"Idempotency-Key": "paris-1"})
    assert again == pool
    pools = step("GET", f"/v1/estates/{e}/pools", adm, status=200)["items"]
    assert sorted((p["name"], p["allocated"]) for p in pools) == [("Default Pool", 18), ("Paris", 12)]

    # A code made on one replica is redeemed on the other; it is single use on both.
    code = step("POST", f"/v1/estates/{e}/pools/{pool['id']}/auth-codes", adm, {}, status=201)["code"]
    enrolled = step("POST", "/v1/enroll", None, {"code": code, "name": "enc-host-7"}, status=201)
    refused = step("POST", "/v1/enroll", None, {"code": code, "name": "enc-host-8"}, status=403)
    assert refused["code"] == "auth_code_invalid"
    srv = enrolled["server_token"]
    assert enrolled["pool_id"] == pool["id"]

    # The encoder's lease, verified against the keys each replica publishes: the same.
    lease = step(
        "POST", "/v1/leases", srv, {"encoder": "ENC-0001", "licence_type": "one-in-one-out", "count": 3}, status=201
    )
    jwks = [step("GET", "/v1/keys", None, status=200) for _ in replicas]
    assert all(j == jwks[0] for j in jwks) and len(jwks[0]["keys"]) == 1
    assert enrolled["keys"] == jwks[0]
    keys = jws.keys_from_jwks(jwks[0])
    claims = jws.verify(lease["token"], keys, now=time.time())
    assert (claims["sub"], claims["n"], claims["lt"], claims["lid"]) == ("ENC-0001", 3, "one-in-one-out", lease["id"])
    assert step("GET", f"/v1/estates/{e}/pools/{pool['id']}", adm, status=200)["in_use"] == 3

    # Renewed, grown and renewed again, each through the other replica: one lease throughout.
    renewed = step("POST", f"/v1/leases/{lease['id']}/renew", srv, status=200)
    assert renewed["id"] == lease["id"] and renewed["expires_at"] >= lease["expires_at"]
    assert jws.verify(renewed["token"], keys, now=time.time())["lid"] == lease["id"]
    grown = step(
        "POST", "/v1/leases", srv, {"encoder": "ENC-0001", "licence_type": "one-in-one-out", "count": 5}, status=200
    )
    assert grown["id"] == lease["id"] and grown["count"] == 5
    renewed = step("POST", f"/v1/leases/{lease['id']}/renew", srv, status=200)
    assert jws.verify(renewed["token"], keys, now=time.time())["n"] == 5
    assert step("GET", f"/v1/estates/{e}/pools/{pool['id']}", adm, status=200)["in_use"] == 5

    # The audit log, read through either replica, holds every step once.
    events = step("GET", f"/v1/estates/{e}/events?order=desc&limit=50", adm, status=200)["items"]
    actions = [ev["action"] for ev in events]
    assert actions.count("lease.granted") == 1 and actions.count("pool.created") == 1, actions

    # Released through one; the other knows at once.
    step("DELETE", f"/v1/leases/{lease['id']}", srv, status=204)
    gone = step("POST", f"/v1/leases/{lease['id']}/renew", srv, status=410)
    assert (gone["code"], gone["reason"]) == ("lease_gone", "released")
    assert step("GET", f"/v1/estates/{e}/pools/{pool['id']}", adm, status=200)["in_use"] == 0
    again_lease = step(
        "POST", "/v1/leases", srv, {"encoder": "ENC-0001", "licence_type": "one-in-one-out", "count": 2}, status=201
    )
    assert step("GET", f"/v1/estates/{e}/pools/{pool['id']}", adm, status=200)["in_use"] == 2
    step("DELETE", f"/v1/leases/{again_lease['id']}", srv, status=204)

    summary = check_books(empty_database)
    assert re.search(
        r"^checked 1 estate, 2 purchases, 0 active leases and \d+ events: all invariants hold$", summary, re.M
    )


@pytest.mark.slow
def test_the_readme_walkthrough_runs_through_two_replicas_alternately(
    replicas: tuple[Replica, ...], empty_database: str, tmp_path: Path
) -> None:
    """The README's script itself, every request alternating between the replicas; only
    the URLs, the operator token's source and the books check's database differ."""
    a, b = replicas
    script = walkthrough()
    assert "B=http://127.0.0.1:8400\n" in script
    parts = script.split("$B/")
    assert len(parts) > 8  # every API step names $B
    script = parts[0] + "".join(f"${'B' + str(i % 2 + 1)}/{part}" for i, part in enumerate(parts[1:]))
    script = script.replace("B=http://127.0.0.1:8400\n", f"B1={a.url}\nB2={b.url}\n")
    assert "check --data-dir tenure-data" in script
    script = script.replace("check --data-dir tenure-data", f"check --database '{empty_database}'")
    # The operator keeps the deployment's token where the walkthrough reads it.
    (tmp_path / "tenure-data").mkdir(mode=0o700)
    (tmp_path / "tenure-data" / "operator-token").write_text(OPERATOR)
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parents[1])
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        env=clean_env(PYTHONPATH=str(ROOT), TENURE_SECRET_KEY=TEST_SECRET_KEY),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert re.search(r"^code: \d{8}$", result.stdout, re.M)
    assert re.search(r"^verified: ENC-0001 holds 3 one-in-one-out until \d+$", result.stdout, re.M)
    assert re.search(r"^3$", result.stdout, re.M)  # the pool's in_use, read through a replica
    assert re.search(r'"action": "lease.granted"', result.stdout)
    assert re.search(
        r"^checked 1 estate, 2 purchases, 1 active lease and \d+ events: all invariants hold$", result.stderr, re.M
    ), result.stderr
    # Both replicas answered API requests (their access logs name the routes they served).
    for replica in (a, b):
        assert re.search(r"POST /v1/", replica.log.read_text()), replica.log.read_text()
