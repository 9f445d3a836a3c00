"""Several ``tenure-broker serve`` processes on one PostgreSQL database (docs/design.md,
"Several replicas"): real processes, started as an operator starts them.

- SIGKILL of one replica under acquire load loses no acknowledged lease, the books hold
  (``tenure-broker check``), and the other replicas carry on serving throughout;
- ``tenure-broker keys rotate --database URL`` reaches every replica within
  ``key_reload_seconds``, and ``GET /v1/keys`` answers the same on each;
- the same code redeemed on two replicas at once enrols one server;
- a wrong-code budget spent across replicas is one budget;
- the database restarting under two replicas (through ``tests/tcpproxy.py``): each
  answers 503 meanwhile, never a 500, and serves again by itself.

The in-process counterparts (one app per "replica", a manual clock) are in
``tests/broker/test_replicas.py``.
"""

from __future__ import annotations

import base64
import json
import random
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import pytest

from broker.ids import new_token
from broker.store.postgres import PROBE_SECONDS
from tests.broker.fleet import Replica, call, cli
from tests.postgres import PostgresServer
from tests.tcpproxy import TcpProxy

pytestmark = pytest.mark.slow

ONE = "one-in-one-out"
KEY_RELOAD = 0.5  # key_reload_seconds of the replicas
PROXY = "127.0.0.1/32"  # the tests' requests come "through a trusted proxy": X-Forwarded-For counts


def start(workdir: Path, database: str, operator: str, names: list[str]) -> list[Replica]:
    """Replicas started at the same moment on ``database``, each answering /healthz."""
    replicas = [
        Replica(
            name,
            workdir,
            database,
            operator,
            key_reload_seconds=KEY_RELOAD,
            trusted_proxies=PROXY,
            database_pool_size=4,
        ).start()
        for name in names
    ]
    try:
        for r in replicas:
            r.ready()
    except BaseException:
        for r in replicas:
            r.stop()
        raise
    return replicas


@dataclass
class Fleet:
    replicas: list[Replica]
    database: str
    operator: str
    workdir: Path

    def estate(self, name: str, seats: int, via: int = 0) -> dict[str, Any]:
        url = self.replicas[via].url
        status, est = call(f"{url}/v1/estates", "POST", self.operator, {"name": name, "admin_name": "Al"})
        assert status == 201, est
        status, bought = call(
            f"{url}/v1/estates/{est['id']}/purchases",
            "POST",
            self.operator,
            {"sales_order": "SO-1", "licence_type": ONE, "quantity": seats, "expires_at": "2099-01-01T00:00:00Z"},
        )
        assert status == 201, bought
        return dict(est)

    def code(self, est: dict[str, Any], via: int = 0) -> str:
        status, made = call(
            f"{self.replicas[via].url}/v1/estates/{est['id']}/pools/{est['default_pool_id']}/auth-codes",
            "POST",
            est["admin_token"],
            {},
        )
        assert status == 201, made
        return str(made["code"])

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database, autocommit=True) as conn:
            return [tuple(r) for r in conn.execute(sql, params)]

    def books_hold(self) -> None:
        checked = cli(self.database, self.workdir, "check")
        assert checked.returncode == 0, (checked.stdout, checked.stderr)


@pytest.fixture(scope="module")
def fleet(postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Three replicas on one database, for the tests that kill none of them."""
    database = postgres_server.create()
    workdir = tmp_path_factory.mktemp("fleet")
    operator = new_token("op")
    replicas = start(workdir, database, operator, ["r1", "r2", "r3"])
    try:
        yield Fleet(replicas, database, operator, workdir)
    finally:
        for r in replicas:
            r.stop()
        postgres_server.drop(database)


# -- keys --------------------------------------------------------------------------------


def kid_of(token: str) -> str:
    head = token.split(".")[0]
    return str(json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))["kid"])


def first_seen(fleet: Fleet, stop: threading.Event, seen: dict[str, float]) -> None:
    """Note when a signing key other than those known at the start is first in the
    database, and first published by each replica (polled every 20 ms)."""
    old = {row[0] for row in fleet.rows("SELECT kid FROM key_material WHERE purpose = 'signing'")}
    while not stop.is_set():
        if "database" not in seen:
            new = {row[0] for row in fleet.rows("SELECT kid FROM key_material WHERE purpose = 'signing'")} - old
            if new:
                seen["database"] = time.monotonic()
        for r in fleet.replicas:
            if r.name not in seen and {k["kid"] for k in call(f"{r.url}/v1/keys")[1]["keys"]} - old:
                seen[r.name] = time.monotonic()
        time.sleep(0.02)


def test_keys_rotate_reaches_every_replica_within_key_reload_seconds(fleet: Fleet) -> None:
    before = [call(f"{r.url}/v1/keys")[1] for r in fleet.replicas]
    assert all(jwks == before[0] for jwks in before)
    seen: dict[str, float] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=first_seen, args=(fleet, stop, seen))
    watcher.start()
    try:
        rotated = cli(fleet.database, fleet.workdir, "keys", "rotate")
        assert rotated.returncode == 0, rotated.stderr
        deadline = time.monotonic() + KEY_RELOAD + 2.0
        while len(seen) <= len(fleet.replicas) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        watcher.join(10)
    kid = re.search(r"Added signing key (\S+);", rotated.stdout)
    assert kid is not None, rotated.stdout
    assert "database" in seen and all(r.name in seen for r in fleet.replicas), seen
    lags = {r.name: seen[r.name] - seen["database"] for r in fleet.replicas}
    # Within key_reload_seconds of the commit (with a margin for a busy machine).
    assert max(lags.values()) <= KEY_RELOAD + 0.5, lags
    # One answer everywhere: the new key, and the old one still published beside it.
    after = [call(f"{r.url}/v1/keys")[1] for r in fleet.replicas]
    assert all(jwks == after[0] for jwks in after), after
    assert [k["kid"] for k in after[0]["keys"]][-1] == kid.group(1)
    assert {k["kid"] for k in before[0]["keys"]} <= {k["kid"] for k in after[0]["keys"]}
    # And every replica signs with it.
    est = fleet.estate("Keys", 6)
    status, host = call(f"{fleet.replicas[0].url}/v1/enroll", "POST", None, {"code": fleet.code(est), "name": "k"})
    assert status == 201, host
    for i, r in enumerate(fleet.replicas):
        status, lease = call(
            f"{r.url}/v1/leases", "POST", host["server_token"], {"encoder": f"E{i}", "licence_type": ONE, "count": 1}
        )
        assert status == 201, lease
        assert kid_of(lease["token"]) == kid.group(1), r.name
    print(f"\nkeys rotate: published by each replica {', '.join(f'{v:.2f}' for v in lags.values())} s after the commit")


# -- codes -------------------------------------------------------------------------------


def at_once(*jobs: Any) -> list[Any]:
    """Run the callables in threads released together; their results, in order."""
    gate = threading.Barrier(len(jobs))
    results: list[Any] = [None] * len(jobs)

    def run(i: int) -> None:
        gate.wait()
        results[i] = jobs[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_the_same_code_redeemed_on_two_replicas_at_once_enrols_once(fleet: Fleet) -> None:
    est = fleet.estate("Codes", 4)
    rounds = 8
    for n in range(rounds):
        code = fleet.code(est, via=n % 3)
        a, b = fleet.replicas[n % 3], fleet.replicas[(n + 1) % 3]
        # Each from an address of its own: the failure budget is not what is tested here.
        answers = at_once(
            *(
                partial(
                    call,
                    f"{r.url}/v1/enroll",
                    "POST",
                    None,
                    {"code": code, "name": f"host-{n}-{i}"},
                    {"X-Forwarded-For": f"203.0.113.{2 * n + i}"},
                )
                for i, r in enumerate((a, b))
            )
        )
        statuses = sorted(s for s, _ in answers)
        assert statuses == [201, 403], answers
        loser = next(body for s, body in answers if s == 403)
        assert loser["code"] == "auth_code_invalid", loser
    servers = fleet.rows("SELECT name FROM servers WHERE estate_id = %s", (est["id"],))
    assert len(servers) == rounds, servers
    fleet.books_hold()


def test_a_wrong_code_budget_spent_across_replicas_is_one_budget(fleet: Fleet) -> None:
    fleet.estate("Guessed at", 1)  # a code key, and something to guess at

    def guess(r: Replica, address: str) -> int:
        status, _ = call(
            f"{r.url}/v1/enroll", "POST", None, {"code": "00000000", "name": "h"}, {"X-Forwarded-For": address}
        )
        return status

    replicas = fleet.replicas
    # The budget (redeem_failures_per_address, 10) spent a little on each replica ...
    assert [guess(replicas[i % 3], "198.51.100.7") for i in range(10)] == [403] * 10
    # ... is spent on all of them, for that address only.
    assert [guess(r, "198.51.100.7") for r in replicas] == [429] * 3
    assert [guess(r, "198.51.100.8") for r in replicas] == [403] * 3
    # Spent at once across replicas: still one budget (attempts in flight count everywhere).
    results = at_once(*(partial(guess, r, "198.51.100.9") for r in replicas for _ in range(6)))
    assert sorted(results).count(403) == 10 and sorted(results).count(429) == 8, results


# -- SIGKILL under load ------------------------------------------------------------------

SERVERS = 4
ENCODERS_PER_SERVER = 3
SEATS = 30  # tight enough that some grows are refused
LOAD_SECONDS = 1.0  # of load before each kill, and after it


@dataclass
class Encoder:
    """What one encoder was last told, and the replica it asks next."""

    server: str
    token: str
    name: str
    acked: dict[str, Any] | None = None  # the lease as last answered; None: holds none
    answers: int = 0
    cut_off: int = 0  # requests whose replica died under them (asked again elsewhere)


@dataclass
class Load:
    replicas: list[Replica]
    alive: set[str]
    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[str] = field(default_factory=list)
    served: dict[str, int] = field(default_factory=dict)  # answers per replica
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, start: int, path: str, method: str, token: str, body: Any) -> tuple[int, Any, int]:
        """The request on the next replica alive from ``start``; one that dies under it
        gets it again on the next (as an agent asks its load balancer again).
        Returns (status, body, replicas that failed it)."""
        failed = 0
        for step in range(len(self.replicas) * 3):
            r = self.replicas[(start + step) % len(self.replicas)]
            if r.name not in self.alive:
                continue
            try:
                status, answer = call(r.url + path, method, token, body, timeout=15)
            except OSError:
                failed += 1
                continue
            with self.lock:
                self.served[r.name] = self.served.get(r.name, 0) + 1
            return status, answer, failed
        raise AssertionError(f"no replica answered {method} {path}")

    def worker(self, e: Encoder, seed: float) -> None:
        rng = random.Random(seed)
        turn = int(seed * 1000)  # where this encoder starts on the round of replicas
        while not self.stop.is_set():
            turn += 1
            roll = rng.random()
            body: Any
            if e.acked is not None and roll < 0.35:
                op, path, method, body = "renew", f"/v1/leases/{e.acked['id']}/renew", "POST", {}
            elif e.acked is not None and roll < 0.42:
                op, path, method, body = "release", f"/v1/leases/{e.acked['id']}", "DELETE", None
            else:
                count = rng.choice([0, 1, 1, 2, 3, 4])
                op, path, method = "acquire", "/v1/leases", "POST"
                body = {"encoder": e.name, "licence_type": ONE, "count": count}
            status, answer, failed = self.send(turn, path, method, e.token, body)
            e.answers += 1
            e.cut_off += failed
            if status >= 500:
                self.errors.append(f"{op}: {status} {answer}")
            elif status in (200, 201):
                e.acked = answer
            elif status == 204:
                e.acked = None
            elif status == 409 and answer.get("code") == "pool_exhausted":
                pass  # refused: the lease stays as it was
            elif status == 410 and op != "acquire":
                e.acked = None  # released (maybe by the same request, on the replica that died)
            else:
                self.errors.append(f"{op}: unexpected {status} {answer}")


def verify(fleet: Fleet, encoders: list[Encoder]) -> int:
    """Every encoder's lease in the database is the one it was last acknowledged; returns
    how many leases that is."""
    rows = {
        (server, encoder): (lease_id, count)
        for server, encoder, lease_id, count in fleet.rows(
            "SELECT server_id, encoder, id, count FROM leases WHERE state = 'active'"
        )
    }
    held = 0
    for e in encoders:
        found = rows.get((e.server, e.name))
        if e.acked is None:
            assert found is None, (e.name, found)
        else:
            assert found == (e.acked["id"], e.acked["count"]), (e.name, e.acked, found)
            held += 1
    return held


def test_sigkill_of_a_replica_under_load_loses_no_acknowledged_lease_and_the_others_carry_on(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    database = postgres_server.create()
    operator = new_token("op")
    replicas = start(tmp_path, database, operator, ["r1", "r2", "r3"])
    fleet = Fleet(replicas, database, operator, tmp_path)
    rng = random.Random(20261130)
    figures: dict[str, Any] = {"kills": 0, "leases_checked": 0}
    try:
        est = fleet.estate("Crash", SEATS)
        encoders = []
        for s in range(SERVERS):
            status, host = call(
                f"{replicas[s % 3].url}/v1/enroll", "POST", None, {"code": fleet.code(est), "name": f"h{s}"}
            )
            assert status == 201, host
            encoders += [
                Encoder(host["server_id"], host["server_token"], f"ENC-{s}-{n}") for n in range(ENCODERS_PER_SERVER)
            ]
        for victim in (replicas[1], replicas[2]):
            load = Load(replicas, {r.name for r in replicas})
            threads = [threading.Thread(target=load.worker, args=(e, rng.random()), daemon=True) for e in encoders]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.5, 1.0) * LOAD_SECONDS)  # a different moment each time
            victim.kill()
            load.alive.discard(victim.name)
            figures["kills"] += 1
            served = dict(load.served)
            time.sleep(LOAD_SECONDS)  # the others carry on
            load.stop.set()
            for t in threads:
                t.join(30)
            assert not any(t.is_alive() for t in threads)
            assert not load.errors, load.errors[:10]
            for r in replicas:
                if r is not victim:
                    assert load.served.get(r.name, 0) > served.get(r.name, 0), (r.name, served, load.served)
            figures["leases_checked"] += verify(fleet, encoders)
            fleet.books_hold()
            # Every lease held renews on a survivor (the one the victim granted too).
            for e in encoders:
                if e.acked is not None:
                    status, renewed = call(f"{replicas[0].url}/v1/leases/{e.acked['id']}/renew", "POST", e.token, {})
                    assert status == 200 and renewed["id"] == e.acked["id"], (e.name, status, renewed)
                    e.acked = renewed
            victim.start().ready()  # back in the fleet for the next round
        figures["answers"] = sum(e.answers for e in encoders)
        figures["cut_off"] = sum(e.cut_off for e in encoders)
        assert figures["answers"] > 100, figures  # the load was real
        assert figures["leases_checked"] > 0, figures
    finally:
        for r in replicas:
            r.stop()
        postgres_server.drop(database)
    print(f"\nreplica SIGKILL figures: {figures}")


# -- the database restarting under the replicas ------------------------------------------


def test_replicas_ride_out_a_database_restart_by_themselves(postgres_server: PostgresServer, tmp_path: Path) -> None:
    database = postgres_server.create()
    proxy = TcpProxy.before(database)
    operator = new_token("op")
    replicas = [
        Replica(name, tmp_path, proxy.url(database), operator, database_timeout_seconds=0.5).start()
        for name in ("r1", "r2")
    ]
    try:
        for r in replicas:
            r.ready()
        fleet = Fleet(replicas, database, operator, tmp_path)
        est = fleet.estate("Restart", 4)
        status, host = call(f"{replicas[0].url}/v1/enroll", "POST", None, {"code": fleet.code(est), "name": "h"})
        assert status == 201, host

        def acquire(r: Replica, encoder: str) -> tuple[int, Any]:
            body = {"encoder": encoder, "licence_type": ONE, "count": 1}
            return call(f"{r.url}/v1/leases", "POST", host["server_token"], body)

        proxy.refuse(cut=False)  # the server shuts down: no new connections ...
        postgres_server.terminate(database)  # ... and each backend ends its own
        for r in replicas:
            status, answer = acquire(r, f"during-{r.name}")
            assert status == 503 and answer["code"] == "storage_unavailable", (r.name, status, answer)
        # A write within the last PROBE_SECONDS vouches for the database in the process
        # that made it (each worker of a replica is one): after that, every one probes.
        time.sleep(PROBE_SECONDS)
        for r in replicas:
            for _ in range(4):  # fresh connections: whichever worker answers
                status, answer = call(f"{r.url}/healthz")
                assert status == 503 and answer["code"] == "storage_unavailable", (r.name, status, answer)
        assert fleet.rows("SELECT count(*) FROM leases") == [(0,)]
        proxy.restore()
        back = time.monotonic()
        waited: dict[str, tuple[float, int]] = {}
        for r in replicas:
            while call(f"{r.url}/healthz")[0] != 200:
                assert time.monotonic() - back < 3.0, f"{r.name} did not recover by itself"
                time.sleep(0.05)
            # That 200 came from one worker; another may still be waiting out its pool's
            # pause between tries to connect (up to a second). A refused acquire changed
            # nothing, so it is tried again, as an agent would, until one is granted.
            tries = 0
            while True:
                tries += 1
                status, lease = acquire(r, f"after-{r.name}-{tries}")
                if status == 201:
                    break
                assert status == 503 and lease["code"] == "storage_unavailable", (r.name, status, lease)
                assert time.monotonic() - back < 3.0, f"{r.name} did not grant again by itself: {lease}"
                time.sleep(0.05)
            waited[r.name] = (time.monotonic() - back, tries)
        assert fleet.rows("SELECT count(*) FROM leases") == [(2,)]  # the refused tries left none
        fleet.books_hold()
        shown = ", ".join(f"{name} {seconds:.2f} s (acquire {tries})" for name, (seconds, tries) in waited.items())
        print(f"\ndatabase restart under two replicas: granting again after {shown}")
    finally:
        for r in replicas:
            r.stop()
        proxy.close()
        postgres_server.drop(database)
