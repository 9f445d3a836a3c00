"""Crash: ``tenure-broker serve`` under acquire/renew load, SIGKILLed and restarted.

Each encoder has one worker thread that acquires, grows, shrinks, renews and releases
its lease one request at a time and records every answer it got (invariant 4 speaks of
*acknowledged* leases). After each SIGKILL the broker restarts on the same data
directory, and:

- every encoder's lease in the database is the last one it was answered, or the
  outcome of the one request it had in flight when the broker died;
- every lease acknowledged before the kill is still there and renews (200, same id);
- invariants 1 and 2 hold and ``PRAGMA integrity_check`` is ``ok``.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from broker.ids import new_token
from tests.reliability.invariants import check_books, connect_ro, integrity_ok
from tests.reliability.live import BrokerProcess, request

# SIGKILL of the one SQLite broker; replicas on PostgreSQL have tests of their own.
pytestmark = [pytest.mark.slow, pytest.mark.sqlite_only]

KILLS = 5
SERVERS = 4
ENCODERS_PER_SERVER = 3
SEATS = 30  # tight enough that some grows are refused


@dataclass
class Known:
    """What one encoder was told, and what it had asked when the broker died."""

    server: str
    token: str
    encoder: str
    acked: dict[str, Any] | None = None  # the lease as last answered; None: holds none
    in_flight: tuple[str, int] | None = None  # (operation, count) sent but unanswered
    answers: int = 0


@dataclass
class Load:
    url: str
    known: list[Known]
    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[str] = field(default_factory=list)

    def worker(self, k: Known, seed: int) -> None:
        rng = random.Random(seed)
        while not self.stop.is_set():
            roll = rng.random()
            if k.acked is not None and roll < 0.35:
                op, count = "renew", k.acked["count"]
                k.in_flight = (op, count)
                status, body = self._call(f"/v1/leases/{k.acked['id']}/renew", "POST", k.token, {})
            elif k.acked is not None and roll < 0.42:
                op, count = "release", 0
                k.in_flight = (op, count)
                status, body = self._call(f"/v1/leases/{k.acked['id']}", "DELETE", k.token, None)
            else:
                op, count = "acquire", rng.choice([0, 1, 1, 2, 3, 4])
                k.in_flight = (op, count)
                status, body = self._call(
                    "/v1/leases",
                    "POST",
                    k.token,
                    {"encoder": k.encoder, "licence_type": "one-in-one-out", "count": count},
                )
            if status is None:
                return  # the broker is gone: keep in_flight for the checks
            k.in_flight = None
            k.answers += 1
            if status >= 500:
                self.errors.append(f"{op} {count}: {status} {body}")
            elif status in (200, 201):
                k.acked = body
            elif status == 204:
                k.acked = None
            elif status == 409 and body.get("code") == "pool_exhausted":
                pass  # refused: the lease stays as it was
            elif status == 410:
                k.acked = None
            else:
                self.errors.append(f"{op} {count}: unexpected {status} {body}")

    def _call(self, path: str, method: str, token: str, body: Any) -> tuple[int | None, Any]:
        try:
            return request(self.url + path, method, token, body, timeout=10)
        except OSError:
            return None, None


def _setup(url: str, operator: str) -> tuple[str, str, list[Known]]:
    _, est = request(f"{url}/v1/estates", "POST", operator, {"name": "Crash", "admin_name": "Al"})
    base = f"{url}/v1/estates/{est['id']}"
    status, _ = request(
        f"{base}/purchases",
        "POST",
        operator,
        {
            "sales_order": "SO-1",
            "licence_type": "one-in-one-out",
            "quantity": SEATS,
            "expires_at": "2099-01-01T00:00:00Z",
        },
    )
    assert status == 201
    known = []
    for s in range(SERVERS):
        _, code = request(f"{base}/pools/{est['default_pool_id']}/auth-codes", "POST", est["admin_token"], {})
        status, host = request(f"{url}/v1/enroll", "POST", None, {"code": code["code"], "name": f"h{s}"})
        assert status == 201, host
        known += [Known(host["server_id"], host["server_token"], f"ENC-{s}-{e}") for e in range(ENCODERS_PER_SERVER)]
    return est["id"], est["admin_token"], known


def _verify(db_path: Path, known: list[Known]) -> int:
    """The database agrees with what each encoder was told; returns the leases checked."""
    db = connect_ro(db_path)
    try:
        check_books(db)
        checked = 0
        for k in known:
            row = db.execute(
                "SELECT * FROM leases WHERE server_id = ? AND encoder = ? AND state = 'active'", (k.server, k.encoder)
            ).fetchone()
            acked_ok = (
                (row is None)
                if k.acked is None
                else (row is not None and row["id"] == k.acked["id"] and row["count"] == k.acked["count"])
            )
            if acked_ok:
                if row is not None and k.acked is not None:
                    from shared.timefmt import parse_ts

                    # A renew in flight may have committed a later expiry; never an earlier one.
                    assert row["expires_at"] >= parse_ts(k.acked["expires_at"]), (k.encoder, dict(row))
                    checked += 1
                continue
            # Otherwise the request in flight must have committed (its answer was lost).
            assert k.in_flight is not None, (k.encoder, k.acked, dict(row) if row else None)
            op, count = k.in_flight
            if op == "release" or count == 0:
                assert row is None, (k.encoder, op, dict(row))
            else:
                assert row is not None and row["count"] == count, (k.encoder, op, count, row and dict(row))
            # Adopt what the broker holds, as a re-adopting agent would.
            k.acked = (
                None if row is None else {"id": row["id"], "count": row["count"], "expires_at": _ts(row["expires_at"])}
            )
        return checked
    finally:
        db.close()


def _ts(epoch: int) -> str:
    from shared.timefmt import format_ts

    return format_ts(epoch)


def test_sigkill_under_load_loses_no_acknowledged_lease(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    operator = new_token("op")
    log = tmp_path / "broker.log"
    broker = BrokerProcess(data_dir, operator, log)
    broker.start()
    rng = random.Random(20261130)
    figures = {"kills": 0, "answers": 0, "leases_checked": 0, "renewed_after_restart": 0}
    try:
        _, _, known = _setup(broker.url, operator)
        for cycle in range(KILLS):
            load = Load(broker.url, known)
            threads = [threading.Thread(target=load.worker, args=(k, rng.random()), daemon=True) for k in known]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.3, 1.2))  # a different moment each time
            broker.kill()
            figures["kills"] += 1
            for t in threads:
                t.join(15)
            load.stop.set()
            assert not load.errors, load.errors[:10]

            broker = BrokerProcess(data_dir, operator, log)
            broker.start()
            figures["leases_checked"] += _verify(data_dir / "tenure.db", known)
            integrity_ok(data_dir / "tenure.db")
            # Every surviving lease renews on the restarted broker.
            for k in known:
                if k.acked is None:
                    continue
                status, body = request(f"{broker.url}/v1/leases/{k.acked['id']}/renew", "POST", k.token, {})
                assert status == 200 and body["id"] == k.acked["id"], (cycle, k.encoder, status, body)
                assert body["count"] == k.acked["count"]
                k.acked = body
                figures["renewed_after_restart"] += 1
        figures["answers"] = sum(k.answers for k in known)
        assert figures["answers"] > 100, figures  # the load was real
        assert figures["leases_checked"] > 0
    finally:
        broker.stop()
    integrity_ok(data_dir / "tenure.db")
    check_books(data_dir / "tenure.db")
    print(f"\ncrash figures: {figures}")
