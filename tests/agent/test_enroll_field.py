"""Enrolment as it meets the field: --force over leases, root, URLs, rate limits.

Against real brokers: in-process (``live_broker``, on the fake clock) or a real
``tenure-broker serve`` subprocess; a ``Proxy`` in front of one stands for a broker that
the old binding can no longer reach.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from agent.cli import main
from agent.config import Config
from agent.enroll import enroll
from agent.errors import EnrollError
from shared.durations import about
from tests.agent.harness import AgentFactory, FakeClock, LiveBroker, serve_broker
from tests.agent.processes import BrokerProcess, Estate
from tests.agent.proxy import Proxy

NOBODY = 65534


@pytest.mark.parametrize(
    ("seconds", "said"),
    [
        (0.2, "about 1 second"),
        (3, "about 3 seconds"),
        (31, "about 30 seconds"),
        (80, "about 1 minute"),
        (100, "about 2 minutes"),
        (894, "about 15 minutes"),
        (3500, "about 58 minutes"),
        (3600, "about 1 hour"),
        (5400, "about 1.5 hours"),
        (4 * 3600 + 600, "about 4 hours"),
        (3 * 86400, "about 3 days"),
    ],
)
def test_durations_read_as_a_person_says_them(seconds: float, said: str) -> None:
    assert about(seconds) == said


async def test_a_rate_limited_enrolment_says_about_how_long(
    tmp_path: Path, fake_clock: FakeClock, agent_config: Config
) -> None:
    async with serve_broker(tmp_path / "broker", fake_clock, redeem_failures_per_address=1) as broker:
        with pytest.raises(EnrollError, match="unknown, already used"):
            await enroll(agent_config, "00000000", broker_url=broker.url, name="enc-host-7")
        await fake_clock.advance(6)
        with pytest.raises(EnrollError) as caught:
            await enroll(agent_config, await broker.code(), broker_url=broker.url, name="enc-host-7")
    assert str(caught.value) == (
        f"the broker at {broker.url} is refusing enrolments from this address for now "
        "(too many attempts); try again in about 15 minutes"
    )


async def test_force_over_an_unreachable_old_broker_says_so_and_reports_no_release(
    live_broker: LiveBroker, proxy: Proxy, start_agent: AgentFactory, agent_config: Config, fake_clock: FakeClock
) -> None:
    await enroll(agent_config, await live_broker.code(), broker_url=proxy.url, name="enc-host-7")
    agent = await start_agent()
    await agent.want("ENC-1", 2)
    await agent.wait_state("ENC-1", "active")
    await agent.close()  # a crash: the lease stays recorded, and taken
    await proxy.down()  # the old binding's broker address no longer answers
    done = await enroll(
        agent_config,
        await live_broker.code(),
        broker_url=live_broker.url,
        name="enc-host-7",
        force=True,
        clock=fake_clock,
    )
    assert done.handed_back == (
        '; could not release the lease of server "enc-host-7" in pool "Default Pool" '
        f"(cannot reach the broker at {proxy.url}: connection refused): "
        "their seats stay taken until they lapse, in about 5 minutes"
    )
    assert await live_broker.in_use() == 2


async def test_force_over_a_removed_old_binding_says_the_broker_dropped_it(
    live_broker: LiveBroker, start_agent: AgentFactory, agent_config: Config, fake_clock: FakeClock
) -> None:
    await enroll(agent_config, await live_broker.code(), broker_url=live_broker.url, name="enc-host-7")
    agent = await start_agent()
    await agent.want("ENC-1", 2)
    await agent.wait_state("ENC-1", "active")
    await agent.close()
    for server in (await live_broker.call("GET", f"/v1/estates/{live_broker.estate_id}/servers", live_broker.admin))[
        "items"
    ]:
        await live_broker.call(
            "DELETE", f"/v1/estates/{live_broker.estate_id}/servers/{server['id']}", live_broker.admin
        )
    done = await enroll(
        agent_config,
        await live_broker.code(),
        broker_url=live_broker.url,
        name="enc-host-7",
        force=True,
        clock=fake_clock,
    )
    assert done.handed_back == (
        '; the broker no longer knows the old binding (server "enc-host-7" in pool "Default Pool"), '
        "so it holds no seats for it"
    )
    assert await live_broker.in_use() == 0


# --------------------------------------------------------------------------- as root


def _owners(folder: Path) -> dict[str, tuple[int, int]]:
    found = {".": (folder.stat().st_uid, folder.stat().st_gid)}
    for path in folder.rglob("*"):
        info = path.lstat()
        found[str(path.relative_to(folder))] = (info.st_uid, info.st_gid)
    return found


@pytest.mark.skipif(os.geteuid() != 0, reason="enrolling as root needs root")
def test_enrolling_as_root_leaves_every_file_to_the_state_directorys_owner(
    tmp_path: Path, short_dir: Path, agent_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    broker = BrokerProcess(tmp_path / "broker")
    try:
        estate = Estate(broker)
        state = tmp_path / "state"
        state.mkdir(mode=0o700)
        os.chown(state, NOBODY, NOBODY)
        sock = str(short_dir / "agent.sock")
        argv = ["enroll", estate.code(), "--broker", broker.url, "--state-dir", str(state), "--socket", sock]
        assert main([*argv, "--name", "enc-host-7"]) == 0
        # A domain binding in a state directory still to be made: made for its parent's owner.
        nested = state / "tenants" / "a"
        argv = ["enroll", estate.code("Paris"), "--broker", broker.url, "--state-dir", str(nested), "--socket", sock]
        assert main([*argv, "--domain", "tenant-a"]) == 0
    finally:
        broker.stop()
    owners = _owners(state)
    assert {"bindings.json", "tenants", "tenants/a", "tenants/a/bindings.json"} <= set(owners)
    assert set(owners.values()) == {(NOBODY, NOBODY)}, owners
    assert stat.S_IMODE((state / "bindings.json").stat().st_mode) == 0o600
