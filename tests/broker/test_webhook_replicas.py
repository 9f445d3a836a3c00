"""Webhook delivery from real ``tenure-broker serve`` processes on one PostgreSQL database:
two replicas never send one attempt twice, and a replica stopped by SIGTERM mid-send
exits cleanly and gives its unfinished deliveries back at once."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.ids import new_token
from tests.broker.fleet import Replica, call
from tests.broker.webhook_kit import ThreadReceiver
from tests.postgres import PostgresServer

pytestmark = pytest.mark.slow


def replica(name: str, workdir: Path, database: str, operator: str) -> Replica:
    return Replica(
        name,
        workdir,
        database,
        operator,
        webhook_allow_private="true",
        webhook_poll_seconds=0.05,
        database_pool_size=4,
    )


def ok(url: str, method: str, token: str, body: Any = None, status: int = 200) -> Any:
    got, answer = call(url, method, token, body)
    assert got == status, (method, url, got, answer)
    return answer


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.02)


@pytest.fixture
def receiver() -> Iterator[ThreadReceiver]:
    with ThreadReceiver.serving() as server:
        yield server


def test_two_replicas_send_each_event_once_and_sigterm_gives_back_what_was_in_flight(
    postgres_server: PostgresServer, tmp_path: Path, receiver: ThreadReceiver
) -> None:
    database = postgres_server.create()
    operator = new_token("op")
    one, two = replica("r1", tmp_path, database, operator), replica("r2", tmp_path, database, operator)
    try:
        for r in (one.start(), two.start()):
            r.ready()
        est = ok(f"{one.url}/v1/estates", "POST", operator, {"name": "Relay", "admin_name": "Al"}, 201)
        admin, hooks = est["admin_token"], f"/v1/estates/{est['id']}/webhooks"
        made = ok(f"{two.url}{hooks}", "POST", admin, {"url": receiver.url, "events": ["server.enrolled"]}, 201)
        receiver.secrets.append(made["secret"])
        test = f"{hooks}/{made['id']}/test"
        receiver.delay = 0.02
        sent = [ok(f"{(one, two)[i % 2].url}{test}", "POST", admin, {}, 202)["event_id"] for i in range(40)]
        wait_for(lambda: len(receiver.verified) >= 40, 20, "40 deliveries")
        time.sleep(0.5)  # a second sending of any of them would have come by now
        assert sorted(p["id"] for p in receiver.verified) == sorted(sent)
        assert receiver.unverified == [] and len(receiver.arrived) == 40

        # SIGTERM while a delivery hangs: a clean exit, and the row is due again at once
        # (not when its claim would have run out, a minute later).
        assert two.stop() == 0
        receiver.delay = 30.0
        hung = ok(f"{one.url}{test}", "POST", admin, {}, 202)["event_id"]
        wait_for(lambda: hung in receiver.arrived, 10, "the hanging delivery to arrive")
        stopped = time.monotonic()
        assert one.stop() == 0
        assert time.monotonic() - stopped < 12
        receiver.delay = 0.0
        again = replica("r3", tmp_path, database, operator).start()
        try:
            again.ready()
            wait_for(lambda: any(p["id"] == hung for p in receiver.verified), 10, "the event sent again")
            # The receiver has answered; the broker records it a moment later.
            path = f"{again.url}{hooks}/{made['id']}/deliveries"
            wait_for(lambda: ok(path, "GET", admin)["deliveries"]["pending"] == 0, 5, "the attempt recorded")
            assert ok(path, "GET", admin)["deliveries"] == {"pending": 0, "delivered": 41, "failed": 0}
        finally:
            again.stop()
    finally:
        one.stop()
        two.stop()
