"""Model-based test of the books: random sequences of everything that moves a seat.

A hypothesis state machine drives the domain functions (``broker.purchases``,
``broker.pools``, ``broker.codes``, ``broker.leases``, ``broker.servers``) through a real
store (``open_store``), each call one ``store.write`` transaction exactly as the HTTP
handlers make it, and keeps a deliberately naive reference model beside it. It runs on
both stores: on SQLite, one store on a file; on PostgreSQL, two stores (two replicas) on
one fresh schema, the writes alternating between them (``Books``). After every step:

- ``pools.list_views`` agrees with the model, pool by pool and holding by holding (read
  through the replica that did not write last);
- invariants 1 and 2 hold, read straight from the database (``invariants.check_books``);
- a refused operation changed no row of any table (invariant 3: all or nothing);
- every grant took new seats only from grantable purchases, earliest expiry first, and
  its ``exp`` is within the grace of every purchase it holds (invariant 7);
- with the licence policies on (docs/design.md, "Licence policies"): pools' soft-lock
  windows set and changed as time moves, encoders of both kinds, servers' ``max`` and
  ``reserved`` set and cleared, forced releases and removals with and without the
  override. The model decides every grant, refusal (``server_limit``,
  ``reservation_exceeds_pool``…) and held seat; the views' ``soft_locked`` and
  ``reserved`` must agree, and no held seat or reservation exceeds a holding.

The HTTP layer is not in the loop on purpose: it keeps a step under a millisecond (on
SQLite), so thousands of steps run in seconds. The HTTP paths get their own tests beside
this one.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import sys
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from broker import codes, estates, leases, pools, purchases, servers
from broker.config import Config
from broker.errors import (
    AuthCodeInvalid,
    LicencesInUse,
    LicenceTypeNotInPool,
    NameTaken,
    NotFound,
    NoValidLicences,
    PoolExhausted,
    PoolNotEmpty,
    ReservationExceedsPool,
    ServerHasLeases,
    ServerLimit,
    TenureError,
    ValidationFailed,
)
from broker.ids import CountingIds
from broker.principal import Principal
from broker.store import open_store
from tests.dbaccess import Database
from tests.postgres import TEST_SECRET_KEY, PostgresServer
from tests.reliability.invariants import GRACE, Reader, check_books, snapshot

T = TypeVar("T")
DAY = 86400
T0 = 1_798_761_600  # 2027-01-01T00:00:00Z
TYPES = ("one-in-one-out", "four-in-one-out")
ENCODERS = ("E1", "E2", "E3", "E4")
POOL_NAMES = ("Paris", "paris", " Lyon", "Oslo", "default pool")
OPERATOR = Principal(kind="operator", token_hash=b"operator")
CODE_KEY = b"k" * 32

# Figures for docs/reliability.md, printed at the end of the run.
STATS: dict[str, int] = defaultdict(int)
EXAMPLES = 150
QUICK_EXAMPLES = {"sqlite": 15, "postgres": 8}  # PostgreSQL: a schema per example, see FreshSchemas


@dataclass
class MPurchase:
    id: str
    so: str
    lt: str
    qty: int
    expires_at: int
    status: str = "valid"
    held_at: int | None = None

    def grantable(self, now: int) -> bool:
        return self.status == "valid" and now < self.expires_at

    def grace_end(self) -> int:
        end = self.expires_at + GRACE
        if self.status == "on_hold" and self.held_at is not None:
            end = min(end, self.held_at + GRACE)
        return end

    def state(self, now: int) -> str:
        if self.status == "on_hold":
            return "on_hold"
        if now >= self.expires_at + GRACE:
            return "ended"
        if now >= self.expires_at:
            return "expired"
        if now >= self.expires_at - 30 * DAY:
            return "expiring"
        return "valid"


@dataclass
class MLease:
    id: str
    server: str
    encoder: str
    pool: str
    lt: str
    seats: dict[str, int]
    exp: int
    state: str = "active"

    @property
    def count(self) -> int:
        return sum(self.seats.values())


@dataclass
class MServer:
    id: str
    pool: str
    principal: Principal


@dataclass
class Model:
    now: int
    default: str
    pools: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> {name, lease_seconds}
    purchases: dict[str, MPurchase] = field(default_factory=dict)
    alloc: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    servers: dict[str, MServer] = field(default_factory=dict)
    leases: dict[str, MLease] = field(default_factory=dict)
    # The policies: (pool, encoder) -> (kind, first grant); (pool, encoder, purchase) ->
    # seats held (rows stay until cleared, counted only while the window is open); and
    # (server, licence type) -> (max, reserved).
    windows: dict[tuple[str, str], tuple[str, int]] = field(default_factory=dict)
    locks: dict[tuple[str, str, str], int] = field(default_factory=dict)
    limits: dict[tuple[str, str], tuple[int | None, int]] = field(default_factory=dict)

    def live(self, lease: MLease) -> bool:
        return lease.state == "active" and self.now < lease.exp

    def in_use(self, pool: str, pid: str) -> int:
        return sum(le.seats.get(pid, 0) for le in self.leases.values() if le.pool == pool and self.live(le))

    def lapse_due(self, pool: str) -> None:
        for le in self.leases.values():
            if le.pool == pool and le.state == "active" and le.exp <= self.now:
                le.state = "lapsed"
                self.hold(pool, le.encoder, le.seats, le.exp)

    # -- soft-lock --

    def window_open(self, pool: str, encoder: str, at: int) -> bool:
        w = self.windows.get((pool, encoder))
        if w is None or pool not in self.pools:
            return False
        return at < w[1] + self.pools[pool]["soft_lock"][w[0]]

    def hold(self, pool: str, encoder: str, seats: dict[str, int], at: int) -> None:
        if not self.window_open(pool, encoder, at):
            return
        for pid, n in seats.items():
            if n > 0:
                self.locks[(pool, encoder, pid)] = self.locks.get((pool, encoder, pid), 0) + n

    def clear_locks(self, pool: str, encoder: str) -> None:
        for key in [k for k in self.locks if k[0] == pool and k[1] == encoder]:
            del self.locks[key]

    def forget_ended(self, pool: str) -> None:
        for key in [k for k in self.locks if k[0] == pool and not self.window_open(pool, k[1], self.now)]:
            del self.locks[key]

    def live_locks(self, pool: str, pid: str, encoder: str | None = None) -> int:
        """Seats held now on the purchase in the pool (for ``encoder`` alone if given)."""
        return sum(
            n
            for (pl, enc, p), n in self.locks.items()
            if pl == pool and p == pid and (encoder is None or enc == encoder) and self.window_open(pl, enc, self.now)
        )

    # -- limits --

    def server_use(self, sid: str, lt: str, pool: str, but_encoder: str | None = None) -> int:
        return sum(
            le.count
            for le in self.leases.values()
            if le.server == sid and le.lt == lt and le.pool == pool and le.encoder != but_encoder and self.live(le)
        )

    def limit_rows(self, pool: str, lt: str) -> list[tuple[str, int | None, int]]:
        return [
            (sid, mx, rs)
            for (sid, t), (mx, rs) in self.limits.items()
            if t == lt and sid in self.servers and self.servers[sid].pool == pool
        ]

    def unused_reserved(self, pool: str, lt: str, but_server: str | None = None) -> int:
        return sum(
            max(0, rs - self.server_use(sid, lt, pool)) for sid, _, rs in self.limit_rows(pool, lt) if sid != but_server
        )

    def alloc_of_type(self, pool: str, lt: str) -> int:
        return sum(n for (pl, pid), n in self.alloc.items() if pl == pool and self.purchases[pid].lt == lt)

    def by_expiry(self, pids: list[str]) -> list[str]:
        return sorted(pids, key=lambda p: (self.purchases[p].expires_at, p))

    def free(self, pool: str, lt: str) -> list[tuple[str, int]]:
        out = []
        for pid in self.by_expiry([p for (pl, p) in self.alloc if pl == pool]):
            p = self.purchases[pid]
            n = self.alloc[(pool, pid)] - self.in_use(pool, pid)
            if p.lt == lt and p.grantable(self.now) and n > 0:
                out.append((pid, n))
        return out

    def holds_type(self, pool: str, lt: str) -> bool:
        """The pool holds seats of ``lt`` in any state: refusal is a shortage, not a wrong type."""
        return any(n > 0 and self.purchases[pid].lt == lt for (pl, pid), n in self.alloc.items() if pl == pool)

    def view(self, pool_id: str) -> dict[str, Any]:
        holdings = {}
        totals = {"allocated": 0, "in_use": 0, "available": 0}
        by_type: dict[str, dict[str, int]] = {}
        totals.update(soft_locked=0, reserved=0)
        zeros = {"allocated": 0, "in_use": 0, "available": 0, "soft_locked": 0, "reserved": 0}
        for (pl, pid), n in self.alloc.items():
            if pl != pool_id or n == 0:
                continue
            p = self.purchases[pid]
            used = self.in_use(pool_id, pid)
            held = self.live_locks(pool_id, pid)
            avail = max(0, n - used - held) if p.grantable(self.now) else 0
            holdings[pid] = (n, used, held, n - used - held, p.state(self.now))
            per = by_type.setdefault(p.lt, dict(zeros))
            for bucket in (totals, per):
                bucket["allocated"] += n
                bucket["in_use"] += used
                bucket["available"] += avail
                bucket["soft_locked"] += held
        for (sid, lt), (_, rs) in self.limits.items():
            if sid in self.servers and self.servers[sid].pool == pool_id:
                by_type.setdefault(lt, dict(zeros))["reserved"] += rs
                totals["reserved"] += rs
        revoked = sum(
            le.count
            for le in self.leases.values()
            if le.pool == pool_id and le.state == "revoked" and le.exp > self.now
        )
        return {
            "name": self.pools[pool_id]["name"],
            "lease_seconds": self.pools[pool_id]["lease_seconds"],
            "soft_lock_seconds": dict(self.pools[pool_id]["soft_lock"]),
            **totals,
            "by_type": by_type,
            "holdings": holdings,
            "revoked_unexpired": revoked,
        }


def actual_view(v: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": v["name"],
        "lease_seconds": v["lease_seconds"],
        "soft_lock_seconds": v["soft_lock_seconds"],
        "allocated": v["allocated"],
        "in_use": v["in_use"],
        "available": v["available"],
        "soft_locked": v["soft_locked"],
        "reserved": v["reserved"],
        "by_type": v["by_type"],
        "holdings": {
            h["purchase_id"]: (h["allocated"], h["in_use"], h["soft_locked"], h["unused"], h["state"])
            for h in v["holdings"]
        },
        "revoked_unexpired": v["revoked_unexpired"],
    }


class FreshSchemas:
    """A fresh PostgreSQL schema for each example, made one ahead on a thread of its own.

    Making a schema (its migrations) and dropping one are the server's work and, on a busy
    machine, as long as a short example: done while the example before runs, they overlap
    it rather than add to it. The examples still never share a schema.
    """

    def __init__(self, server: PostgresServer) -> None:
        self._server = server
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="fresh-schema")
        self._next = self._thread.submit(server.create)

    def take(self) -> str:
        url = self._next.result()
        self._next = self._thread.submit(self._server.create)
        return url

    def drop(self, url: str) -> None:
        self._thread.submit(self._server.drop, url)

    def close(self) -> None:
        self._thread.submit(self._server.drop, self._next.result())
        self._thread.shutdown(wait=True)


class Books(RuleBasedStateMachine):
    """One estate per example, on a database of its own with counting ids.

    On SQLite: one store on a file of its own. On PostgreSQL (``schemas`` set): a fresh
    schema per example and TWO stores on it, as two broker replicas would open it; the
    writes alternate between them, call by call (a code made through one is redeemed
    through the other), and the reads after each step go through the replica that did
    not write last, so every step also checks that a commit on one replica is what the
    other sees next.
    """

    loop: asyncio.AbstractEventLoop
    folder: Path
    schemas: FreshSchemas | None = None

    def __init__(self) -> None:
        super().__init__()
        self.model: Model | None = None
        self._pending: Model | None = None
        self._turn = 0
        STATS["sequences"] += 1
        data_dir = self.folder / f"books-{STATS['sequences']}"
        data_dir.mkdir()
        # Ids decide ties (equal expiries are ordered by id), so random ids would make a
        # replayed sequence take another path and hypothesis would call it flaky. The
        # replicas share one counter: between them they hand out each id once.
        ids = CountingIds()
        if self.schemas is None:
            config = Config(data_dir=data_dir, sqlite_synchronous="normal")
            self.db = Database(None, config.db_path)
            replicas = 1
        else:
            url = self.schemas.take()
            config = Config(data_dir=data_dir, database=url, secret_key=TEST_SECRET_KEY, database_pool_size=2)
            self.db = Database(url, config.db_path)
            replicas = 2
        self.stores = [self.loop.run_until_complete(open_store(config, ids=ids)) for _ in range(replicas)]
        self.reader = Reader(self.db)

    def teardown(self) -> None:
        self.reader.close()
        for store in self.stores:
            self.loop.run_until_complete(store.close())
        if self.db.url is not None:
            assert self.schemas is not None
            self.schemas.drop(self.db.url)
        else:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.db.path}{suffix}").unlink(missing_ok=True)

    # -- plumbing -------------------------------------------------------------

    @property
    def m(self) -> Model:
        assert self.model is not None
        return self.model

    def write(self, fn: Callable[[Any], T]) -> T:
        """``fn`` as one transaction, through each replica in turn."""
        replica = self._turn % len(self.stores)
        self._turn += 1
        STATS[f"writes via replica {replica + 1}"] += 1
        return self.loop.run_until_complete(self.stores[replica].write(fn))

    def read(self, fn: Callable[[Any], T]) -> T:
        """``fn`` through the replica whose turn to write is next: not the last writer."""
        store = self.stores[self._turn % len(self.stores)]
        return self.loop.run_until_complete(store.read(fn))

    def attempt(self, fn: Callable[[Any], T], expect_error: type[TenureError] | None) -> T | None:
        """Run ``fn``; if the model says it must fail, it must, and change nothing."""
        STATS["steps"] += 1
        STATS[f"op:{sys._getframe(1).f_code.co_name}"] += 1
        if expect_error is None:
            return self.write(fn)
        before = snapshot(self.reader)
        try:
            self.write(fn)
        except TenureError as exc:
            assert isinstance(exc, expect_error), (exc, expect_error)
        else:
            raise AssertionError(f"expected {expect_error.__name__}")
        assert snapshot(self.reader) == before, "a refused operation changed the books"
        STATS["refused"] += 1
        STATS[f"refused:{expect_error.__name__}"] += 1
        return None

    # -- set-up -----------------------------------------------------------------

    @initialize(
        lease_seconds=st.sampled_from([60, 3600, 7 * DAY]),
        windows=st.sampled_from([None, (45 * DAY, 1800), (3600, 60)]),
    )
    def make_estate(self, lease_seconds: int, windows: tuple[int, int] | None) -> None:
        now = T0
        est = self.write(lambda tx: estates.create(tx, now, OPERATOR, "Acme", "Alice", lease_seconds))
        self.estate = est["id"]
        self.model = Model(now=now, default=est["default_pool_id"])
        self.m.pools[est["default_pool_id"]] = {
            "name": "Default Pool",
            "lease_seconds": lease_seconds,
            "soft_lock": {"hardware": 0, "container": 0},
        }
        # A starting stock and one server, so that most sequences lease from the start;
        # in two sequences of three, soft-lock windows from the start too.
        self.purchase(qty=10, lt=TYPES[0], days=400)
        self._enrol_into(self.m.default)
        if windows is not None:
            hardware, container = windows
            self.write(
                lambda tx: pools.update(
                    tx,
                    now,
                    OPERATOR,
                    self.estate,
                    self.m.default,
                    name=None,
                    lease_seconds=None,
                    soft_lock_seconds={"hardware": hardware, "container": container},
                )
            )
            self.m.pools[self.m.default]["soft_lock"] = {"hardware": hardware, "container": container}

    # -- purchases ------------------------------------------------------------

    @rule(qty=st.integers(1, 12), lt=st.sampled_from(TYPES), days=st.sampled_from([-3, 1, 20, 45, 400]))
    def purchase(self, qty: int, lt: str, days: int) -> None:
        m, now = self.m, self.m.now
        so = f"SO-{len(m.purchases) + 1}"
        exp = now + days * DAY
        row = self.attempt(
            lambda tx: purchases.record(
                tx, now, OPERATOR, self.estate, sales_order=so, licence_type=lt, quantity=qty, expires_at=exp
            ),
            None,
        )
        assert row is not None
        m.purchases[row["id"]] = MPurchase(row["id"], so, lt, qty, exp)
        m.alloc[(m.default, row["id"])] += qty

    @precondition(lambda self: self.model is not None and bool(self.m.purchases))
    @rule(
        data=st.data(),
        status=st.sampled_from([None, "valid", "on_hold"]),
        days=st.sampled_from([None, -40, -1, 2, 35, 400]),
    )
    def update_purchase(self, data: st.DataObject, status: str | None, days: int | None) -> None:
        m, now = self.m, self.m.now
        pid = data.draw(st.sampled_from(list(m.purchases)))
        exp = None if days is None else now + days * DAY
        self.attempt(
            lambda tx: purchases.update(tx, now, OPERATOR, self.estate, pid, status=status, expires_at=exp), None
        )
        p = m.purchases[pid]
        new_status = status or p.status
        if new_status == "on_hold" and p.status != "on_hold":
            p.held_at = now
        elif new_status == "valid":
            p.held_at = None
        p.status = new_status
        if exp is not None:
            p.expires_at = exp

    # -- pools and moves --------------------------------------------------------

    def _move_plan(self, data: st.DataObject, src: str) -> list[dict[str, Any]]:
        held = [pid for (pl, pid), n in self.m.alloc.items() if pl == src and n > 0]
        if not held:
            return []
        items = data.draw(st.lists(st.tuples(st.sampled_from(held), st.integers(1, 6)), min_size=1, max_size=3))
        return [{"purchase_id": p, "count": n} for p, n in items]

    def _move_error(self, src: str, items: list[dict[str, Any]]) -> type[TenureError] | None:
        """Why the move must be refused, on the books as the move's own lapse leaves them:
        seats in use or held for an encoder, or reserved seats it would take."""
        m = copy.deepcopy(self.m)
        m.lapse_due(src)
        wanted: dict[str, int] = defaultdict(int)
        for it in items:
            wanted[it["purchase_id"]] += it["count"]
        if any(m.alloc[(src, p)] - m.in_use(src, p) - m.live_locks(src, p) < n for p, n in wanted.items()):
            return LicencesInUse
        leaving: dict[str, int] = defaultdict(int)
        for p, n in wanted.items():
            leaving[m.purchases[p].lt] += n
        for lt, n in leaving.items():
            rows = m.limit_rows(src, lt)
            if not rows:
                continue
            allocated = m.alloc_of_type(src, lt) - n
            if sum(rs for _, _, rs in rows) > allocated:
                return ReservationExceedsPool
            pids = [p for (pl, p) in m.alloc if pl == src and m.purchases[p].lt == lt]
            free = allocated - sum(m.in_use(src, p) + m.live_locks(src, p) for p in pids)
            if free < m.unused_reserved(src, lt):
                return LicencesInUse
        return None

    def _apply_move(self, src: str, dst: str, items: list[dict[str, Any]]) -> None:
        self.m.lapse_due(src)
        for it in items:
            self.m.alloc[(src, it["purchase_id"])] -= it["count"]
            self.m.alloc[(dst, it["purchase_id"])] += it["count"]

    def _name_clash(self, name: str, except_id: str | None = None) -> bool:
        key = name.strip().casefold()
        return any(p["name"].strip().casefold() == key and pid != except_id for pid, p in self.m.pools.items())

    @precondition(lambda self: self.model is not None)
    @rule(
        data=st.data(),
        name=st.sampled_from(POOL_NAMES),
        with_moves=st.booleans(),
        lease_seconds=st.sampled_from([60, 3600, 30 * DAY]),
    )
    def create_pool(self, data: st.DataObject, name: str, with_moves: bool, lease_seconds: int) -> None:
        m, now = self.m, self.m.now
        items = self._move_plan(data, m.default) if with_moves else []
        error: type[TenureError] | None = None
        if self._name_clash(name):
            error = NameTaken
        elif items:
            error = self._move_error(m.default, items)
        view = self.attempt(
            lambda tx: pools.create(tx, now, OPERATOR, self.estate, name, lease_seconds, items or None), error
        )
        if view is not None:
            m.pools[view["id"]] = {
                "name": name,
                "lease_seconds": lease_seconds,
                "soft_lock": {"hardware": 0, "container": 0},
            }
            if items:
                self._apply_move(m.default, view["id"], items)

    @precondition(lambda self: self.model is not None and len(self.m.pools) > 1)
    @rule(data=st.data())
    def move(self, data: st.DataObject) -> None:
        m, now = self.m, self.m.now
        ids = list(m.pools)
        src = data.draw(st.sampled_from(ids), label="from")
        dst = data.draw(st.sampled_from(ids), label="to")
        items = self._move_plan(data, src)
        if not items:
            pid = data.draw(st.sampled_from(list(m.purchases))) if m.purchases else None
            if pid is None:
                return
            items = [{"purchase_id": pid, "count": 1}]
        error: type[TenureError] | None = None
        if src == dst:
            error = ValidationFailed
        else:
            error = self._move_error(src, items)
        done = self.attempt(lambda tx: pools.move(tx, now, OPERATOR, self.estate, src, dst, items), error)
        if done is not None:
            self._apply_move(src, dst, items)

    @precondition(lambda self: self.model is not None and len(self.m.pools) > 1)
    @rule(
        data=st.data(),
        name=st.sampled_from((None, *POOL_NAMES)),
        lease_seconds=st.sampled_from([None, 60, 600, 30 * DAY]),
    )
    def update_pool(self, data: st.DataObject, name: str | None, lease_seconds: int | None) -> None:
        m, now = self.m, self.m.now
        pool_id = data.draw(st.sampled_from(list(m.pools)))
        error = NameTaken if name is not None and self._name_clash(name, pool_id) else None
        done = self.attempt(
            lambda tx: pools.update(tx, now, OPERATOR, self.estate, pool_id, name=name, lease_seconds=lease_seconds),
            error,
        )
        if done is not None:
            if name is not None:
                m.pools[pool_id]["name"] = name
            if lease_seconds is not None:
                m.pools[pool_id]["lease_seconds"] = lease_seconds

    @precondition(lambda self: self.model is not None and len(self.m.pools) > 1)
    @rule(data=st.data())
    def delete_pool(self, data: st.DataObject) -> None:
        m, now = self.m, self.m.now
        pool_id = data.draw(st.sampled_from(list(m.pools)))
        error: type[TenureError] | None = None
        if pool_id == m.default:
            error = pools.DefaultPoolFixed
        else:
            busy = any(s.pool == pool_id for s in m.servers.values()) or any(
                le.pool == pool_id and m.live(le) for le in m.leases.values()
            )
            error = PoolNotEmpty if busy else None
        self.attempt(lambda tx: pools.delete(tx, now, OPERATOR, self.estate, pool_id), error)
        if error is None:
            m.lapse_due(pool_id)
            for (pl, pid), n in list(m.alloc.items()):
                if pl == pool_id:
                    m.alloc[(m.default, pid)] += n
                    del m.alloc[(pl, pid)]
            del m.pools[pool_id]
            # Its windows and held seats go with it.
            m.locks = {k: n for k, n in m.locks.items() if k[0] != pool_id}
            m.windows = {k: w for k, w in m.windows.items() if k[0] != pool_id}

    # -- servers ----------------------------------------------------------------

    @precondition(lambda self: self.model is not None and len(self.m.servers) < 4 and bool(self.m.purchases))
    @rule(data=st.data())
    def enrol(self, data: st.DataObject) -> None:
        m, now = self.m, self.m.now
        stocked = [pl for (pl, pid), n in m.alloc.items() if n > 0 and m.purchases[pid].grantable(now)]
        pool_id = data.draw(st.sampled_from(stocked if stocked and data.draw(st.booleans()) else list(m.pools)))
        self._enrol_into(pool_id)

    def _enrol_into(self, pool_id: str) -> None:
        m, now = self.m, self.m.now
        ok = any(m.purchases[pid].grantable(now) for (pl, pid), n in m.alloc.items() if pl == pool_id and n > 0)
        code = self.attempt(
            lambda tx: codes.make(tx, now, OPERATOR, CODE_KEY, self.estate, pool_id, 3600),
            None if ok else NoValidLicences,
        )
        if code is None:
            return
        bound = self.attempt(
            lambda tx: codes.redeem(tx, now, CODE_KEY, code["code"], f"host-{len(m.servers)}", "server"), None
        )
        assert bound is not None and bound["pool_id"] == pool_id
        # The same code a second time: refused, and nothing changes.
        self.attempt(lambda tx: codes.redeem(tx, now, CODE_KEY, code["code"], "again", "server"), AuthCodeInvalid)
        sid = bound["server_id"]
        m.servers[sid] = MServer(
            sid,
            pool_id,
            Principal(
                kind="server", token_hash=b"", estate_id=self.estate, server_id=sid, name=bound["name"], pool_id=pool_id
            ),
        )

    @precondition(lambda self: self.model is not None and bool(self.m.servers))
    @rule(data=st.data())
    def rebind(self, data: st.DataObject) -> None:
        m, now = self.m, self.m.now
        sid = data.draw(st.sampled_from(list(m.servers)))
        pool_id = data.draw(st.sampled_from(list(m.pools)))
        server = m.servers[sid]
        busy = any(le.server == sid and m.live(le) for le in m.leases.values())
        error: type[TenureError] | None = ServerHasLeases if busy else None
        for (s, lt), (_, rs) in m.limits.items():
            if error is None and s == sid and rs:
                others = sum(r for other, _, r in m.limit_rows(pool_id, lt) if other != sid)
                if others + rs > m.alloc_of_type(pool_id, lt):
                    error = ReservationExceedsPool
        done = self.attempt(lambda tx: servers.rebind(tx, now, OPERATOR, self.estate, sid, pool_id), error)
        if done is not None:
            m.lapse_due(server.pool)
            server.pool = pool_id
            server.principal = dataclasses.replace(server.principal, pool_id=pool_id)

    @precondition(lambda self: self.model is not None and bool(self.m.servers))
    @rule(data=st.data(), override=st.booleans())
    def remove_server(self, data: st.DataObject, override: bool) -> None:
        m, now = self.m, self.m.now
        sid = data.draw(st.sampled_from(list(m.servers)))
        self.attempt(lambda tx: servers.remove(tx, now, OPERATOR, self.estate, sid, override_soft_lock=override), None)
        for le in m.leases.values():
            if le.server == sid and le.state == "active":
                le.state = "lapsed" if le.exp <= now else "revoked"
                if override:
                    m.clear_locks(le.pool, le.encoder)
                else:
                    m.hold(le.pool, le.encoder, le.seats, now)
        del m.servers[sid]

    # -- policies -----------------------------------------------------------------

    @precondition(lambda self: self.model is not None)
    @rule(
        data=st.data(),
        hardware=st.sampled_from([None, 0, 60, 3600, 45 * DAY, 90 * DAY]),
        container=st.sampled_from([None, 0, 60, 1800, 3600]),
    )
    def set_windows(self, data: st.DataObject, hardware: int | None, container: int | None) -> None:
        m, now = self.m, self.m.now
        pool_id = data.draw(st.sampled_from(list(m.pools)))
        seconds = {k: v for k, v in (("hardware", hardware), ("container", container)) if v is not None}
        self.attempt(
            lambda tx: pools.update(
                tx, now, OPERATOR, self.estate, pool_id, name=None, lease_seconds=None, soft_lock_seconds=seconds
            ),
            None,
        )
        m.forget_ended(pool_id)
        m.pools[pool_id]["soft_lock"].update(seconds)
        m.forget_ended(pool_id)
        STATS["window_changes"] += 1

    @precondition(lambda self: self.model is not None and bool(self.m.servers))
    @rule(
        data=st.data(),
        lt=st.sampled_from([TYPES[0], TYPES[0], TYPES[1]]),  # the type the starting stock is of
        cap=st.sampled_from([None, 0, 1, 2, 5]),
        reserved=st.sampled_from([None, 0, 1, 2, 4, 8]),
        clear=st.booleans(),
    )
    def set_limits(self, data: st.DataObject, lt: str, cap: int | None, reserved: int | None, clear: bool) -> None:
        m, now = self.m, self.m.now
        sid = data.draw(st.sampled_from(list(m.servers)))
        change: dict[str, int] | None = None
        if not clear:
            change = {k: v for k, v in (("max", cap), ("reserved", reserved)) if v is not None}
        error: type[TenureError] | None = None
        if change and "max" in change and change.get("reserved", 0) > change["max"]:
            error = ValidationFailed
        elif change and change.get("reserved", 0):
            pool = m.servers[sid].pool
            others = sum(rs for other, _, rs in m.limit_rows(pool, lt) if other != sid)
            if others + change["reserved"] > m.alloc_of_type(pool, lt):
                error = ReservationExceedsPool
        done = self.attempt(
            lambda tx: servers.update(tx, now, OPERATOR, self.estate, sid, pool_id=None, limits={lt: change}), error
        )
        if done is None:
            return
        if change:
            m.limits[(sid, lt)] = (change.get("max"), change.get("reserved", 0))
        else:
            m.limits.pop((sid, lt), None)
        assert done["limits"] == {
            t: {"max": mx, "reserved": rs} for (s, t), (mx, rs) in sorted(m.limits.items()) if s == sid
        }
        STATS["limit_changes"] += 1

    # -- leases -----------------------------------------------------------------

    def _model_acquire(
        self, server: MServer, encoder: str, lt: str, count: int, kind: str | None
    ) -> tuple[type[TenureError] | None, MLease | None, bool]:
        """What the broker must do: (the refusal or None, the lease afterwards, created).

        Works on a copy of the model, left in ``self._pending`` for the caller to adopt
        once the broker has agreed.
        """
        m = copy.deepcopy(self.m)
        self._pending = m
        now, pool = m.now, server.pool
        m.lapse_due(pool)
        lease = next(
            (
                le
                for le in m.leases.values()
                if le.server == server.id and le.encoder == encoder and le.state == "active"
            ),
            None,
        )
        if count == 0:
            if lease is not None:
                lease.state = "released"
                m.hold(pool, encoder, lease.seats, now)
            return None, None, False
        created = lease is None
        if lease is None:
            lease = MLease("?", server.id, encoder, pool, lt, {}, now)
        elif lease.lt != lt:
            m.hold(pool, encoder, lease.seats, now)
            lease.seats, lease.lt = {}, lt
        else:
            # Seats past their grace end: dropped, never held (the licence ended).
            lease.seats = {p: n for p, n in lease.seats.items() if now < m.purchases[p].grace_end()}
        held = lease.count
        if count > held:
            need = count - held
            cap = m.limits.get((server.id, lt), (None, 0))[0]
            if cap is not None and m.server_use(server.id, lt, pool, but_encoder=encoder) + count > cap:
                return ServerLimit, None, created
            free = m.free(pool, lt)
            own = {pid: min(m.live_locks(pool, pid, encoder), n) for pid, n in free}
            open_each = {pid: max(0, n - m.live_locks(pool, pid)) for pid, n in free}
            open_seats = max(0, sum(open_each.values()) - m.unused_reserved(pool, lt, but_server=server.id))
            if sum(own.values()) + open_seats < need:
                return (PoolExhausted if m.holds_type(pool, lt) else LicenceTypeNotInPool), None, created
            taken_own = {}
            for pid, _ in free:
                taken_own[pid] = min(need, own[pid])
                need -= taken_own[pid]
            for pid, _ in free:
                take = min(need, open_each[pid], open_seats)
                need -= take
                open_seats -= take
                if take + taken_own[pid]:
                    lease.seats[pid] = lease.seats.get(pid, 0) + take + taken_own[pid]
                if taken_own[pid]:
                    key = (pool, encoder, pid)
                    m.locks[key] -= taken_own[pid]
                    if m.locks[key] == 0:
                        del m.locks[key]
                    STATS["held seats taken back"] += taken_own[pid]
        elif count < held:
            back = held - count
            returned = {}
            for pid in reversed(m.by_expiry(list(lease.seats))):
                if back == 0:
                    break
                n = min(back, lease.seats[pid])
                lease.seats[pid] -= n
                returned[pid] = n
                back -= n
                if lease.seats[pid] == 0:
                    del lease.seats[pid]
            m.hold(pool, encoder, returned, now)
        if created:
            m.windows.setdefault((pool, encoder), (kind or "hardware", now))
        pool_seconds = m.pools[pool]["lease_seconds"]
        lease.exp = min(now + pool_seconds, *(m.purchases[p].grace_end() for p in lease.seats))
        return None, lease, created

    @precondition(lambda self: self.model is not None and bool(self.m.servers))
    @rule(
        data=st.data(),
        encoder=st.sampled_from(ENCODERS),
        lt=st.sampled_from(TYPES),
        count=st.sampled_from([0, 1, 1, 2, 3, 5, 9]),
        kind=st.sampled_from([None, "hardware", "container"]),
    )
    def acquire(self, data: st.DataObject, encoder: str, lt: str, count: int, kind: str | None = None) -> None:
        self._acquire(self.m.servers[data.draw(st.sampled_from(list(self.m.servers)))], encoder, lt, count, kind)

    @precondition(lambda self: self.model is not None and bool(self.m.servers))
    @rule(
        data=st.data(),
        encoder=st.sampled_from(ENCODERS),
        count=st.sampled_from([1, 1, 2, 3, 5]),
        kind=st.sampled_from([None, "container"]),
    )
    def acquire_a_type_the_pool_holds(self, data: st.DataObject, encoder: str, count: int, kind: str | None) -> None:
        """Encoders mostly ask for a type their pool holds: aim there too, so that grants,
        not only refusals of a missing type, are what the model explores."""
        server = self.m.servers[data.draw(st.sampled_from(list(self.m.servers)))]
        held = [t for t in TYPES if self.m.holds_type(server.pool, t)] or list(TYPES)
        self._acquire(server, encoder, data.draw(st.sampled_from(held)), count, kind)

    def _acquire(self, server: MServer, encoder: str, lt: str, count: int, kind: str | None) -> None:
        m, now = self.m, self.m.now
        refusal, expected, created = self._model_acquire(server, encoder, lt, count, kind)
        args = {} if kind is None else {"encoder_kind": kind}
        grant = self.attempt(lambda tx: leases.acquire(tx, now, server.principal, encoder, lt, count, **args), refusal)
        if refusal is not None:
            STATS[
                "exhausted" if refusal in (PoolExhausted, LicenceTypeNotInPool) else f"refused {refusal.__name__}"
            ] += 1
            return
        # Before the new leases are taken in: every seat that is new came from a
        # grantable purchase (invariant 7).
        old = next(
            (
                le
                for le in m.leases.values()
                if le.server == server.id and le.encoder == encoder and m.live(le) and le.lt == lt
            ),
            None,
        )
        assert self._pending is not None
        self.model = m = self._pending
        if count == 0:
            assert grant is None
            return
        assert grant is not None and expected is not None
        got = {s["purchase_id"]: s["count"] for s in grant.seats}
        assert got == expected.seats, (got, expected.seats)
        for pid, n in got.items():
            if n > (old.seats.get(pid, 0) if old else 0):
                assert m.purchases[pid].grantable(now), f"seat granted from {m.purchases[pid]}"
        assert grant.created == created
        assert grant.lease["count"] == count
        assert grant.lease["licence_type"] == lt
        assert grant.lease["expires_at"] == expected.exp
        assert grant.claims()["exp"] <= min(m.purchases[p].grace_end() for p in got)
        assert grant.claims()["exp"] > now
        if created:
            expected.id = grant.lease["id"]
            m.leases[expected.id] = expected
        else:
            assert grant.lease["id"] == expected.id
        STATS["grants"] += 1

    @precondition(lambda self: self.model is not None and bool(self.m.servers))
    @rule(data=st.data(), encoder=st.sampled_from(ENCODERS), lt=st.sampled_from(TYPES), count=st.integers(0, 6))
    def acquire_again(self, data: st.DataObject, encoder: str, lt: str, count: int) -> None:
        self.acquire(data, encoder, lt, count)  # acquires are the point: twice the weight

    def _pick_lease(self, data: st.DataObject) -> MLease | None:
        if not self.m.leases:
            return None
        return self.m.leases[data.draw(st.sampled_from(list(self.m.leases)))]

    @precondition(lambda self: self.model is not None and bool(self.m.leases))
    @rule(data=st.data(), as_owner=st.booleans())
    def renew(self, data: st.DataObject, as_owner: bool) -> None:
        m, now = self.m, self.m.now
        lease = self._pick_lease(data)
        assert lease is not None
        others = [s for s in m.servers if s != lease.server]
        if not as_owner and others:
            caller = m.servers[data.draw(st.sampled_from(others))]
            self.attempt(lambda tx: leases.renew(tx, now, caller.principal, lease.id), NotFound)
            return
        if lease.server not in m.servers:
            return  # a removed server's token no longer reaches renew (the access tests)
        caller = m.servers[lease.server]
        outcome = self.attempt(lambda tx: leases.renew(tx, now, caller.principal, lease.id), None)
        if lease.state != "active":
            assert isinstance(outcome, leases.Gone) and outcome.reason == lease.state, (outcome, lease)
            return
        if now >= lease.exp or any(now >= m.purchases[p].grace_end() for p in lease.seats):
            assert isinstance(outcome, leases.Gone) and outcome.reason == "lapsed", outcome
            lease.state = "lapsed"
            m.hold(lease.pool, lease.encoder, lease.seats, now)
            return
        assert isinstance(outcome, leases.Grant), outcome
        lease.exp = min(now + m.pools[lease.pool]["lease_seconds"], *(m.purchases[p].grace_end() for p in lease.seats))
        assert outcome.lease["expires_at"] == lease.exp
        assert {s["purchase_id"]: s["count"] for s in outcome.seats} == lease.seats
        STATS["renewals"] += 1

    @precondition(lambda self: self.model is not None and bool(self.m.leases))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        m, now = self.m, self.m.now
        lease = self._pick_lease(data)
        assert lease is not None
        if lease.server not in m.servers:
            return
        caller = m.servers[lease.server].principal
        self.attempt(lambda tx: leases.release(tx, now, caller, lease.id), None)
        if lease.state == "active":
            lease.state = "released"
            m.hold(lease.pool, lease.encoder, lease.seats, now)

    @precondition(lambda self: self.model is not None and bool(self.m.leases))
    @rule(data=st.data(), override=st.booleans())
    def force_release(self, data: st.DataObject, override: bool) -> None:
        m, now = self.m, self.m.now
        lease = self._pick_lease(data)
        assert lease is not None
        self.attempt(
            lambda tx: leases.revoke(tx, now, OPERATOR, self.estate, lease.id, override_soft_lock=override), None
        )
        if lease.state == "active":
            lease.state = "revoked"
            if not override:
                m.hold(lease.pool, lease.encoder, lease.seats, now)
        if override:
            m.clear_locks(lease.pool, lease.encoder)

    # -- time -------------------------------------------------------------------

    @precondition(lambda self: self.model is not None)
    @rule(seconds=st.sampled_from([1, 59, 600, 1200, 3600, 3600, DAY, 10 * DAY, 31 * DAY]))
    def advance(self, seconds: int) -> None:
        self.m.now += seconds
        STATS["clock_jumps"] += 1

    # -- checks -----------------------------------------------------------------

    @invariant()
    def books_agree(self) -> None:
        if self.model is None:
            return
        m, now = self.m, self.m.now
        check_books(self.reader, now=now)
        views = self.read(lambda tx: pools.list_views(tx, now, self.estate))
        assert {v["id"] for v in views} == set(m.pools)
        for v in views:
            assert actual_view(v) == m.view(v["id"]), (v["id"], actual_view(v), m.view(v["id"]))
            assert v["is_default"] == (v["id"] == m.default)
        live = {le.id for le in m.leases.values() if m.live(le)}
        page = self.read(
            lambda tx: leases.list_live(
                tx, now, self.estate, pool_id=None, server_id=None, encoder=None, after="", limit=500
            )
        )
        assert {item["id"] for item in page["items"]} == live


def explore(folder: Path, examples: int, server: PostgresServer | None = None) -> dict[str, int]:
    """Run the model (on SQLite, or with ``server`` on two PostgreSQL replicas); derandomized,
    so that its coverage (and the thresholds on it) is the same on every run: a random draw
    of few acquires once failed CI with 81 grants."""
    loop = asyncio.new_event_loop()
    Books.loop, Books.folder = loop, folder
    Books.schemas = None if server is None else FreshSchemas(server)
    STATS.clear()
    try:
        run_state_machine_as_test(
            Books,
            settings=settings(
                max_examples=examples,
                stateful_step_count=50,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
    finally:
        if Books.schemas is not None:
            Books.schemas.close()
            Books.schemas = None
        loop.close()
    print(f"\nmodel test explored: {dict(STATS)}")
    return dict(STATS)


def postgres(store_kind: str, request: pytest.FixtureRequest) -> PostgresServer | None:
    if store_kind != "postgres":
        return None
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server


def test_books_agree_with_the_model_quick(tmp_path: Path, store_kind: str, request: pytest.FixtureRequest) -> None:
    examples = QUICK_EXAMPLES[store_kind]
    stats = explore(tmp_path, examples, postgres(store_kind, request))
    assert stats["sequences"] >= examples and stats["grants"] > 0
    if store_kind == "postgres":  # both replicas wrote, about equally
        assert abs(stats["writes via replica 1"] - stats["writes via replica 2"]) <= stats["sequences"]


@pytest.mark.slow
@pytest.mark.timeout(300)  # PostgreSQL: 90-100 s measured on a 2-core machine under load
def test_books_agree_with_the_model(tmp_path: Path, store_kind: str, request: pytest.FixtureRequest) -> None:
    stats = explore(tmp_path, EXAMPLES, postgres(store_kind, request))
    assert stats["sequences"] >= EXAMPLES and stats["grants"] > 100 and stats["exhausted"] > 50
    # The policies were exercised, not only switched on.
    assert stats["held seats taken back"] > 0 and stats["refused ServerLimit"] > 0
    assert stats["refused:ReservationExceedsPool"] > 0 and stats["window_changes"] > 20


async def test_the_store_gives_new_rows_the_ids_it_was_given(config_factory: Callable[..., Config]) -> None:
    config = config_factory()
    config.data_dir.mkdir(parents=True, exist_ok=True)
    store = await open_store(config, ids=CountingIds())
    try:
        est = await store.write(lambda tx: estates.create(tx, T0, OPERATOR, "Acme", "Alice", 3600))
    finally:
        await store.close()
    assert (est["id"], est["default_pool_id"]) == (f"est_{1:028d}", f"pool_{2:028d}")
