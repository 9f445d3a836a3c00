"""``tenure-broker serve --workers 2`` as an operator runs it, on each store: one address
served by two worker processes under one parent (docs/configuration.md, ``workers``).

- both workers answer, connections are spread over them, and each is a child of the
  process that was started;
- SIGKILL of a worker under acquire load loses no acknowledged lease: every lease
  answered 201 renews afterwards, and the parent starts a new worker in its place;
- a signing key rotated while it runs is used by every worker within key_reload_seconds;
- an admin's revocation reaches agents' event streams held on either worker within 2 s
  (on SQLite no NOTIFY crosses processes: the workers' hubs look every second);
- SIGTERM to the parent stops everything promptly, exit 0; SIGKILL to the parent takes
  its workers with it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from broker.figures import PUBLISH_SECONDS
from broker.ids import new_token
from tests.broker.fleet import Replica, call, command
from tests.broker.sse import SseReader
from tests.postgres import PostgresServer
from tests.tcpproxy import TcpProxy

pytestmark = pytest.mark.slow

ONE = "one-in-one-out"
WORKER = re.compile(r'^tenure_worker_info\{worker="(\d+|writer)",pid="(\d+)"\} 1$', re.M)
STREAMS_OPEN = re.compile(r'^tenure_streams_open\{worker="(\d+)"\} (\d+)$', re.M)
GRANTED = re.compile(r'^tenure_http_requests_total\{method="POST",route="/v1/leases",status="201"\} (\d+)$', re.M)
WRITE_JOBS = re.compile(r"^tenure_store_write_jobs_total (\d+)$", re.M)


def scrape(url: str, operator: str) -> str:
    """``/metrics`` over a fresh connection (answered by whichever worker the kernel picks)."""
    request = urllib.request.Request(f"{url}/metrics", headers={"Authorization": f"Bearer {operator}"})
    with urllib.request.urlopen(request, timeout=5) as answer:
        return str(answer.read().decode())


def workers_seen(url: str, operator: str, workers: int = 2) -> dict[int, int]:
    """pid → worker index of the HTTP workers a scrape lists (every live one), once it
    lists ``workers`` of them (the others start when worker 0 answers) or after 15 s."""
    deadline = time.monotonic() + 15
    while True:
        text = scrape(url, operator)
        seen = {int(pid): int(index) for index, pid in WORKER.findall(text) if index != "writer"}
        if len(seen) == workers or time.monotonic() > deadline:
            return seen
        time.sleep(0.05)


def streams_per_worker(url: str, operator: str) -> dict[int, int]:
    """worker index → its open event streams, from one scrape."""
    return {int(index): int(n) for index, n in STREAMS_OPEN.findall(scrape(url, operator))}


def granted(text: str) -> int:
    found = GRANTED.search(text)
    return int(found.group(1)) if found else 0


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def set_up(url: str, operator: str, seats: int) -> str:
    """An estate with ``seats`` seats and one enrolled server: its token."""
    status, est = call(f"{url}/v1/estates", "POST", operator, {"name": "Workers", "admin_name": "Al"})
    assert status == 201, est
    status, bought = call(
        f"{url}/v1/estates/{est['id']}/purchases",
        "POST",
        operator,
        {"sales_order": "SO-1", "licence_type": ONE, "quantity": seats, "expires_at": "2099-01-01T00:00:00Z"},
    )
    assert status == 201, bought
    status, made = call(
        f"{url}/v1/estates/{est['id']}/pools/{est['default_pool_id']}/auth-codes", "POST", est["admin_token"], {}
    )
    assert status == 201, made
    status, host = call(f"{url}/v1/enroll", "POST", None, {"code": made["code"], "name": "w"})
    assert status == 201, host
    return str(host["server_token"])


def test_two_workers_share_the_address_survive_a_killed_worker_and_stop_on_sigterm(
    database_url: str | None, tmp_path: Path
) -> None:
    operator = new_token("op")
    broker = Replica("w", tmp_path, database_url or "", operator, workers=2, database_pool_size=4)
    broker.start()
    assert broker.proc is not None
    try:
        broker.ready()
        seen = workers_seen(broker.url, operator)
        assert sorted(seen.values()) == [0, 1], seen
        assert all(parent_of(pid) == broker.proc.pid for pid in seen)

        server = set_up(broker.url, operator, seats=500)
        granted: list[str] = []
        stop = threading.Event()

        def acquire() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                body = {"encoder": f"E{n}", "licence_type": ONE, "count": 1}
                try:
                    status, lease = call(f"{broker.url}/v1/leases", "POST", server, body, timeout=5)
                except OSError:
                    continue  # the connection went with the killed worker: not acknowledged
                if status == 201:
                    granted.append(lease["id"])

        load = threading.Thread(target=acquire)
        load.start()
        try:
            while len(granted) < 20:
                time.sleep(0.01)
            victim = next(pid for pid, index in seen.items() if index == 1)
            os.kill(victim, signal.SIGKILL)
            before = len(granted)
            while len(granted) < before + 20:
                time.sleep(0.01)
        finally:
            stop.set()
            load.join(30)
        # A new worker 1 took the dead one's place; the parent and worker 0 never went.
        deadline = time.monotonic() + 15
        while True:
            now = workers_seen(broker.url, operator)
            if sorted(now.values()) == [0, 1] and victim not in now:
                break
            assert time.monotonic() < deadline, now
        assert broker.proc.poll() is None
        # Every acknowledged lease is there, whichever worker granted or now renews it.
        for lease_id in granted:
            status, renewed = call(f"{broker.url}/v1/leases/{lease_id}/renew", "POST", server, {})
            assert status == 200, (lease_id, renewed)
        # A refusal comes back as itself, whichever process ran the transaction.
        body = {"encoder": "big", "licence_type": ONE, "count": 10_000}
        status, problem = call(f"{broker.url}/v1/leases", "POST", server, body)
        assert (status, problem["code"]) == (409, "pool_exhausted"), problem
    finally:
        started = time.monotonic()
        code = broker.stop()
    assert code == 0, broker.log_path.read_text()[-3000:]
    assert time.monotonic() - started < 5
    log = broker.log_path.read_text()
    assert "2 workers listening" in log and "exited -9" in log


def test_one_scrape_counts_every_worker_never_goes_back_and_keeps_a_dead_workers_counts(
    database_url: str | None, tmp_path: Path
) -> None:
    operator = new_token("op")
    broker = Replica("w", tmp_path, database_url or "", operator, workers=2, database_pool_size=4)
    broker.start()
    try:
        broker.ready()
        server = set_up(broker.url, operator, seats=500)
        acquires = 120
        done = threading.Event()
        seen: list[int] = []

        def scrape_meanwhile() -> None:
            while not done.is_set():
                seen.append(granted(scrape(broker.url, operator)))

        watcher = threading.Thread(target=scrape_meanwhile)
        watcher.start()
        try:
            for n in range(acquires):  # a fresh connection each: the kernel spreads them over both workers
                body = {"encoder": f"E{n}", "licence_type": ONE, "count": 1}
                status, lease = call(f"{broker.url}/v1/leases", "POST", server, body)
                assert status == 201, lease
        finally:
            done.set()
            watcher.join(30)
        assert len(seen) > 5 and seen == sorted(seen), seen  # a counter never goes back
        time.sleep(PUBLISH_SECONDS + 0.5)  # every worker has published since its last grant
        for _ in range(6):  # whichever worker answers, it counts both workers' grants
            text = scrape(broker.url, operator)
            assert granted(text) == acquires, text
            found = WRITE_JOBS.search(text)
            assert found is not None and int(found.group(1)) >= acquires, text
        victim = next(pid for pid, index in workers_seen(broker.url, operator).items() if index == 1)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while sorted((now := workers_seen(broker.url, operator)).values()) != [0, 1] or victim in now:
            assert time.monotonic() < deadline, now
            time.sleep(0.05)
        text = scrape(broker.url, operator)
        assert granted(text) == acquires, text  # the dead worker's grants still count
        # Its gauges went with it: one resident size per live process (two workers, and
        # the writer on SQLite).
        rss = re.findall(r'^process_resident_memory_bytes\{worker="(\w+)"\} \d+$', text, re.M)
        assert sorted(rss) == ["0", "1"] + ([] if database_url else ["writer"]), text
    finally:
        assert broker.stop() == 0


def test_ctrl_c_to_the_whole_process_group_under_load_stops_cleanly_and_loses_nothing(
    database_url: str | None, tmp_path: Path
) -> None:
    # Ctrl-C sends SIGINT to every process of the terminal's foreground group: the
    # workers and the writer hear it at the same moment as the parent, and the parent's
    # SIGTERM follows. Requests in flight still finish, each with its real answer.
    operator = new_token("op")
    broker = Replica("w", tmp_path, database_url or "", operator, workers=2, database_pool_size=4)
    broker.start(own_group=True)
    assert broker.proc is not None
    try:
        broker.ready()
        server = set_up(broker.url, operator, seats=2_000)
        granted: list[str] = []
        answers: list[int] = []
        stop = threading.Event()

        def acquire(worker: int) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                body = {"encoder": f"E{worker}-{n}", "licence_type": ONE, "count": 1}
                try:
                    status, lease = call(f"{broker.url}/v1/leases", "POST", server, body, timeout=15)
                except OSError:
                    continue  # refused or cut: not acknowledged
                answers.append(status)
                if status == 201:
                    granted.append(lease["id"])

        load = [threading.Thread(target=acquire, args=(i,)) for i in range(4)]
        for thread in load:
            thread.start()
        try:
            while len(granted) < 40:
                time.sleep(0.01)
            os.killpg(broker.proc.pid, signal.SIGINT)
            code = broker.proc.wait(20)
        finally:
            stop.set()
            for thread in load:
                thread.join(30)
    finally:
        broker.kill()
    log = broker.log_path.read_text()
    assert code == 0, log[-3000:]
    assert "Traceback" not in log and "exited" not in log, log[-3000:]
    assert set(answers) == {201}, sorted(set(answers))
    again = Replica("w", tmp_path, database_url or "", operator, workers=2, database_pool_size=4)
    again.start()
    try:
        again.ready()
        for lease_id in granted:
            status, renewed = call(f"{again.url}/v1/leases/{lease_id}/renew", "POST", server, {})
            assert status == 200, (lease_id, renewed)
    finally:
        assert again.stop() == 0


def _stop_between(broker: Replica, head: bytes, rest: bytes | None) -> tuple[bytes, float, int]:
    """Send ``head``; once the broker has read it, SIGTERM; send ``rest`` (unless None)
    half a second into the stop. What came back until the broker closed the connection,
    the seconds from SIGTERM to the broker's exit, and its exit status."""
    assert broker.proc is not None
    with socket.create_connection(("127.0.0.1", broker.port), timeout=30) as sock:
        sock.sendall(head)
        time.sleep(0.3)  # the headers are read, and the handler waits for the body
        started = time.monotonic()
        broker.proc.terminate()
        if rest is not None:
            time.sleep(0.5)  # the stop has begun
            sock.sendall(rest)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    code = broker.proc.wait(30)
    return answer, time.monotonic() - started, code


@pytest.mark.parametrize("workers", [1, 2])
def test_a_request_whose_body_is_on_its_way_when_the_stop_begins_gets_its_real_answer(
    database_url: str | None, tmp_path: Path, workers: int
) -> None:
    # aiohttp reads nothing more from a connection once its shutdown has begun, so a
    # request whose headers had arrived and whose body had not (an HTTP client may send
    # them apart, and Nagle's algorithm may hold the second back) used to wait out the
    # body timeout and be answered 408, and held the stop for as long. The stop now waits
    # for the bodies on their way (at most the body timeout) before it begins.
    operator = new_token("op")
    broker = Replica("w", tmp_path, database_url or "", operator, workers=workers, database_pool_size=4)
    broker.start()
    assert broker.proc is not None
    try:
        broker.ready()
        server = set_up(broker.url, operator, seats=10)
        body = json.dumps({"encoder": "E1", "licence_type": ONE, "count": 1}).encode()
        head = (
            b"POST /v1/leases HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {server}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        )
        answer, took, code = _stop_between(broker, head, body)
    finally:
        broker.kill()
    log = broker.log_path.read_text()
    assert code == 0, log[-3000:]
    assert "waiting for 1 request body on the way before stopping (at most 2 s)" in log, log[-3000:]
    assert answer.startswith(b"HTTP/1.1 201 "), answer
    lease = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert lease["encoder"] == "E1", lease
    assert took < 5, took  # not the 10 s body timeout


@pytest.mark.sqlite_only
@pytest.mark.parametrize("body_timeout", [1, 30])
def test_a_body_that_never_comes_holds_the_stop_only_so_long(tmp_path: Path, body_timeout: int) -> None:
    # The stop waits for a body on its way at most the body timeout, and at most 2 s: with
    # a long body timeout the worker would otherwise outlast the parent's 15 s for its stop
    # and be killed. A stalled body then meets its timeout, or aiohttp's 10 s for the
    # requests in flight, whichever comes first.
    operator = new_token("op")
    broker = Replica("w", tmp_path, "", operator, workers=2, body_timeout_seconds=body_timeout)
    broker.start()
    assert broker.proc is not None
    try:
        broker.ready()
        head = b"POST /v1/enroll HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n{"
        answer, took, code = _stop_between(broker, head, None)
    finally:
        broker.kill()
    log = broker.log_path.read_text()
    assert code == 0, log[-3000:]
    assert "did not stop" not in log, log[-3000:]
    if body_timeout == 1:
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert b'"code": "request_timeout"' in answer, answer
        assert took < 4, took  # the 1 s body timeout, not aiohttp's 10 s of grace
    else:
        assert answer == b"", answer  # cut once aiohttp's 10 s have passed: it never came
        assert 11 < took < 14.5, took  # 2 s, then aiohttp's 10 s: within the parent's 15


def test_a_worker_that_cannot_start_while_the_database_is_down_is_tried_again_not_a_crash_loop(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    database = postgres_server.create()
    proxy = TcpProxy.before(database)
    operator = new_token("op")
    broker = Replica("w", tmp_path, proxy.url(database), operator, workers=2, database_timeout_seconds=0.5)
    broker.start()
    assert broker.proc is not None
    try:
        broker.ready()
        victim = next(pid for pid, index in workers_seen(broker.url, operator).items() if index == 1)
        proxy.refuse()  # the database goes away, and worker 1 with it
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while broker.log_path.read_text().count("before it answered: starting it again") < 3:
            assert time.monotonic() < deadline, broker.log_path.read_text()[-3000:]
            time.sleep(0.1)
        assert broker.proc.poll() is None  # failed starts are no crash loop: the broker stays
        proxy.restore()
        deadline = time.monotonic() + 20  # the pause before the next try is at most 10 s
        now: dict[int, int] = {}
        while sorted(now.values()) != [0, 1] or victim in now:
            assert time.monotonic() < deadline, now
            time.sleep(0.1)
            with contextlib.suppress(urllib.error.HTTPError):  # 503 until the store is back
                now = workers_seen(broker.url, operator, workers=2)
    finally:
        assert broker.stop() == 0
        proxy.close()


def test_workers_do_not_outlive_a_killed_parent(tmp_path: Path) -> None:
    operator = new_token("op")
    broker = Replica("w", tmp_path, "", operator, workers=2)
    broker.start()
    try:
        broker.ready()
        pids = set(workers_seen(broker.url, operator))
        assert len(pids) == 2
    finally:
        broker.kill()  # SIGKILL: the parent has no chance to stop its workers itself
    deadline = time.monotonic() + 15
    while any(Path(f"/proc/{pid}").exists() and "(Z)" not in _state(pid) for pid in pids):
        assert time.monotonic() < deadline, "a worker outlived its parent"
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "(Z)"
    return f"({stat[stat.rindex(')') + 2]})"


@pytest.mark.sqlite_only
def test_on_sqlite_one_writer_process_commits_for_every_worker_and_may_die(tmp_path: Path) -> None:
    operator = new_token("op")
    broker = Replica("w", tmp_path, "", operator, workers=2)
    broker.start()
    assert broker.proc is not None
    try:
        broker.ready()
        seen = workers_seen(broker.url, operator)
        children = {
            int(p) for p in Path(f"/proc/{broker.proc.pid}/task/{broker.proc.pid}/children").read_text().split()
        }
        (writer,) = children - set(seen)
        assert ("writer", str(writer)) in WORKER.findall(scrape(broker.url, operator))
        server = set_up(broker.url, operator, seats=100)
        leases = []
        for i in range(10):
            status, lease = call(
                f"{broker.url}/v1/leases", "POST", server, {"encoder": f"E{i}", "licence_type": ONE, "count": 1}
            )
            assert status == 201, lease
            leases.append(lease["id"])
        os.kill(writer, signal.SIGKILL)
        # The workers stay; the next writes wait for the new writer, then go through.
        deadline = time.monotonic() + 15
        while True:
            status, lease = call(
                f"{broker.url}/v1/leases", "POST", server, {"encoder": "after", "licence_type": ONE, "count": 1}
            )
            if status == 201:
                break
            assert status == 503 and time.monotonic() < deadline, (status, lease)
        assert set(workers_seen(broker.url, operator)) == set(seen)
        for lease_id in leases:
            assert call(f"{broker.url}/v1/leases/{lease_id}/renew", "POST", server, {})[0] == 200
    finally:
        code = broker.stop()
    assert code == 0
    assert "writer listening" in broker.log_path.read_text()


def test_every_worker_signs_with_a_rotated_key_within_key_reload_seconds(
    database_url: str | None, tmp_path: Path
) -> None:
    operator = new_token("op")
    broker = Replica("w", tmp_path, database_url or "", operator, workers=2, key_reload_seconds=0.2)
    broker.start()
    try:
        broker.ready()
        assert len(workers_seen(broker.url, operator)) == 2
        server = set_up(broker.url, operator, seats=100)
        where = ["--database", database_url] if database_url else []
        rotated = subprocess.run(
            [*command(), "keys", "rotate", "--data-dir", str(broker.data_dir), *where],
            env=broker.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert rotated.returncode == 0, rotated.stderr
        kid = re.search(r"Added signing key (\S+);", rotated.stdout)
        assert kid is not None, rotated.stdout
        time.sleep(1.0)  # key_reload_seconds, and a margin for a busy machine
        for i in range(20):  # fresh connections: both workers answer some of them
            body = {"encoder": f"K{i}", "licence_type": ONE, "count": 1}
            status, lease = call(f"{broker.url}/v1/leases", "POST", server, body)
            assert status == 201, lease
            head = lease["token"].split(".")[0]
            assert json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))["kid"] == kid.group(1)
    finally:
        assert broker.stop() == 0


async def test_an_admin_reaches_event_streams_held_on_either_worker_within_two_seconds(
    database_url: str | None, tmp_path: Path
) -> None:
    operator = new_token("op")
    broker = Replica("w", tmp_path, database_url or "", operator, workers=2, database_pool_size=4)
    broker.start()
    try:
        await asyncio.to_thread(broker.ready)
        url = broker.url
        status, est = call(f"{url}/v1/estates", "POST", operator, {"name": "Streams", "admin_name": "Al"})
        assert status == 201, est
        bought = {"sales_order": "SO-1", "licence_type": ONE, "quantity": 40, "expires_at": "2099-01-01T00:00:00Z"}
        assert call(f"{url}/v1/estates/{est['id']}/purchases", "POST", operator, bought)[0] == 201
        pool = f"{url}/v1/estates/{est['id']}/pools/{est['default_pool_id']}"
        assert call(pool, "PATCH", est["admin_token"], {"lease_seconds": 3600})[0] == 200
        held: list[tuple[str, SseReader]] = []
        # A new connection for each stream: the kernel spreads them over the two workers.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            for n in range(30):
                status, code = call(f"{pool}/auth-codes", "POST", est["admin_token"], {})
                assert status == 201, code
                status, host = call(f"{url}/v1/enroll", "POST", None, {"code": code["code"], "name": f"h{n}"})
                assert status == 201, host
                body = {"encoder": "ENC-1", "licence_type": ONE, "count": 1}
                status, lease = call(f"{url}/v1/leases", "POST", host["server_token"], body)
                assert status == 201, lease
                resp = await session.get(
                    f"{url}/v1/stream", headers={"Authorization": f"Bearer {host['server_token']}"}
                )
                assert resp.status == 200, await resp.text()
                reader = SseReader(resp)
                assert (await reader.event()).event == "ready"
                held.append((lease["id"], reader))
                if n >= 3:
                    per_worker = await asyncio.to_thread(streams_per_worker, url, operator)
                    if len(per_worker) == 2 and min(per_worker.values()) > 0:
                        break
            assert min(per_worker.values()) > 0, per_worker  # streams on both workers
            for lease_id, reader in held:
                began = time.monotonic()
                path = f"{url}/v1/estates/{est['id']}/leases/{lease_id}"
                assert call(path, "DELETE", est["admin_token"])[0] == 204
                got = await reader.event(within=2.0)
                assert time.monotonic() - began < 2.0
                assert got.event == "lease.revoked" and got.payload["data"]["lease_id"] == lease_id
                reader.response.close()
    finally:
        assert await asyncio.to_thread(broker.stop) == 0
