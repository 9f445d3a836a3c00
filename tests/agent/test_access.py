"""One tenant's software cannot read or release another tenant's leases.

The agent runs in-process (as root, as the tests do); its callers are real processes that
drop to other uids (``os.setresuid``) before they connect, so that the agent knows them
by their peer credentials, as it would know encoder software on a shared host.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.access import Access
from agent.config import Config, load_config
from agent.errors import ConfigError
from tests.agent.harness import LT, AgentFactory, AgentHarness, LiveBroker, enroll_agent

NOBODY, OTHER, STRANGER = 65534, 4242, 4243

# Runs as root until everything it needs is imported (the interpreter lives under /root,
# which other users cannot read), then becomes ``uid`` for good and asks the agent.
CHILD = r"""
import json, os, sys
import agent.bindings, agent.cli, agent.commands, agent.encoder_client
from agent.encoder_client import _UnixConnection

uid = int(sys.argv[1])
if sys.argv[2] == "cli":
    agent.commands.parse(sys.argv[3:])  # argparse imports what it needs lazily
os.setgroups([])
os.setresgid(uid, uid, uid)
os.setresuid(uid, uid, uid)
if sys.argv[2] == "cli":
    sys.exit(agent.cli.main(sys.argv[3:]))
method, path, sock, body = sys.argv[2:6]
conn = _UnixConnection(sock, 10)
conn.request(method, path, body=body or None, headers={"Content-Type": "application/json"} if body else {})
resp = conn.getresponse()
print(json.dumps({"status": resp.status, "body": json.loads(resp.read() or b"null")}))
"""


async def _child(uid: int, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        str(uid),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def call_as(uid: int, agent: AgentHarness, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """``method path`` on the agent's socket, from a process running as ``uid``."""
    code, out, err = await _child(uid, method, path, str(agent.config.socket), json.dumps(body) if body else "")
    assert code == 0, err
    answer = json.loads(out)
    return answer["status"], answer["body"]


@pytest.fixture
def shared_socket(agent_config: Config, short_dir: Path) -> Config:
    """A socket every local user can open: only the allow rules stand between them."""
    short_dir.chmod(0o755)
    return dataclasses.replace(agent_config, socket_mode=0o666)


async def _two_tenants(live_broker: LiveBroker, config: Config) -> dict[str, str]:
    pools = {
        "tenant-a": await live_broker.new_pool("Tenant A", 3),
        "tenant-b": await live_broker.new_pool("Tenant B", 3),
    }
    for domain, pool in pools.items():
        await enroll_agent(config, live_broker.url, await live_broker.code(pool), domain=domain)
    return pools


TENANTS = Access.from_setting(
    {"allow": [{"user": "nobody", "domains": ["tenant-a"]}, {"user": OTHER, "domains": ["tenant-b"]}]}
)


async def test_one_tenant_cannot_read_or_release_anothers_lease(
    live_broker: LiveBroker, shared_socket: Config, start_agent: AgentFactory
) -> None:
    config = dataclasses.replace(shared_socket, local_api=TENANTS)
    pools = await _two_tenants(live_broker, config)
    agent = await start_agent(config)
    a_lease = {"licence_type": LT, "count": 2, "domain": "tenant-a"}

    status, view = await call_as(NOBODY, agent, "PUT", "/v1/encoders/ENC-A1/lease?wait=5", a_lease)
    assert (status, view["state"]) == (200, "active"), view

    # Tenant B's software: it can neither read, take over, nor release tenant A's lease.
    status, problem = await call_as(OTHER, agent, "GET", "/v1/encoders/ENC-A1/lease")
    assert (status, problem["code"]) == (403, "forbidden")
    assert problem["detail"] == "uid 4242 may not act for encoder ENC-A1 (the agent's [local_api] allow rules)"
    status, problem = await call_as(OTHER, agent, "DELETE", "/v1/encoders/ENC-A1/lease")
    assert (status, problem["code"]) == (403, "forbidden")
    move = {**a_lease, "domain": "tenant-b"}
    status, problem = await call_as(OTHER, agent, "PUT", "/v1/encoders/ENC-A1/lease", move)
    assert (status, problem["code"]) == (403, "forbidden")
    code, out, err = await _child(OTHER, "cli", "release", "ENC-A1", "--socket", str(config.socket))
    assert (code, out) == (1, "")
    assert err == "error: uid 4242 may not act for encoder ENC-A1 (the agent's [local_api] allow rules)\n"

    # Nor does it see it: lists show a tenant its own encoders and domains only.
    status, listed = await call_as(OTHER, agent, "GET", "/v1/encoders")
    assert (status, listed["items"]) == (200, [])
    status, seen = await call_as(OTHER, agent, "GET", "/v1/status")
    assert [b["name"] for b in seen["bindings"]] == ["tenant-b"] and seen["encoders"] == []
    status, listed = await call_as(NOBODY, agent, "GET", "/v1/encoders")
    assert [i["encoder"] for i in listed["items"]] == ["ENC-A1"]

    # Tenant A's lease is untouched by all that.
    assert agent.keeper("ENC-A1").state() == "active"
    assert await live_broker.in_use(pools["tenant-a"]) == 2
    assert await live_broker.in_use(pools["tenant-b"]) == 0

    # A user no rule names may do nothing; root (as the agent's own user) may do all.
    status, problem = await call_as(STRANGER, agent, "GET", "/v1/status")
    assert (status, problem["code"]) == (403, "forbidden")
    status, listed = await agent.call("GET", "/v1/encoders")
    assert [i["encoder"] for i in listed["items"]] == ["ENC-A1"]

    # Its own tenant releases it.
    code, out, err = await _child(NOBODY, "cli", "release", "ENC-A1", "--socket", str(config.socket))
    assert (code, out, err) == (0, "Released the lease of encoder ENC-A1.\n", "")
    assert await live_broker.in_use(pools["tenant-a"]) == 0


async def test_a_tenant_cannot_put_its_encoder_into_another_domain(
    live_broker: LiveBroker, shared_socket: Config, start_agent: AgentFactory
) -> None:
    config = dataclasses.replace(shared_socket, local_api=TENANTS)
    pools = await _two_tenants(live_broker, config)
    agent = await start_agent(config)
    status, problem = await call_as(
        OTHER, agent, "PUT", "/v1/encoders/ENC-B1/lease?wait=5", {"licence_type": LT, "count": 1, "domain": "tenant-a"}
    )
    assert (status, problem["code"]) == (403, "forbidden")
    # The host's own server binding is "-" in rules: no tenant rule names it.
    status, problem = await call_as(OTHER, agent, "PUT", "/v1/encoders/ENC-B1/lease", {"licence_type": LT, "count": 1})
    assert (status, problem["code"]) == (403, "forbidden")
    assert agent.runner.get("ENC-B1") is None
    assert await live_broker.in_use(pools["tenant-a"]) == 0


async def test_encoder_patterns_and_groups(
    live_broker: LiveBroker, shared_socket: Config, start_agent: AgentFactory
) -> None:
    access = Access.from_setting({"allow": [{"group": "nogroup", "encoders": ["ENC-N*"]}]})
    config = dataclasses.replace(shared_socket, local_api=access)
    await enroll_agent(config, live_broker.url, await live_broker.code())
    agent = await start_agent(config)
    nogroup = 65534  # nobody's primary group on Debian and Ubuntu
    body = {"licence_type": LT, "count": 1}
    status, view = await call_as(nogroup, agent, "PUT", "/v1/encoders/ENC-N1/lease?wait=5", body)
    assert (status, view["state"]) == (200, "active"), view
    status, problem = await call_as(nogroup, agent, "PUT", "/v1/encoders/ENC-X1/lease", body)
    assert (status, problem["code"]) == (403, "forbidden")


async def test_without_rules_anyone_on_the_socket_may_act_for_everything(
    live_broker: LiveBroker, shared_socket: Config, start_agent: AgentFactory
) -> None:
    """The default, as documented: the socket's mode and group are the only fence."""
    await enroll_agent(shared_socket, live_broker.url, await live_broker.code())
    agent = await start_agent(shared_socket)
    await agent.want("ENC-1", 1)
    await agent.wait_state("ENC-1", "active")
    status, view = await call_as(NOBODY, agent, "GET", "/v1/encoders/ENC-1/lease")
    assert (status, view["state"]) == (200, "active")
    status, done = await call_as(NOBODY, agent, "DELETE", "/v1/encoders/ENC-1/lease?wait=5")
    assert (status, done["state"]) == (200, "released")


# --------------------------------------------------------------------------- the setting


def test_the_rules_come_from_a_local_api_table(tmp_path: Path) -> None:
    file = tmp_path / "agent.toml"
    rules = '[local_api]\nallow = [{user = "enc-a", domains = ["tenant-a"]}, {group = "video", encoders = ["ENC-*"]}]\n'
    file.write_text('socket_mode = "0666"\n' + rules)
    access = load_config(file, env={}).local_api
    assert [(r.user, r.group, r.domains, r.encoders) for r in access.allow] == [
        ("enc-a", None, ("tenant-a",), None),
        (None, "video", None, ("ENC-*",)),
    ]
    # Beside an [agent] table it is read too, never silently dropped.
    file.write_text('[agent]\nsocket_mode = "0666"\n\n' + rules)
    assert len(load_config(file, env={}).local_api.allow) == 2
    env = {"TENURE_AGENT_LOCAL_API": 'allow = [{user = 1001, encoders = ["ENC-7"]}]'}
    assert load_config(None, env=env).local_api.allow[0].user == "1001"
    assert load_config(None, env={}).local_api.allow == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('allow = [{domains = ["a"]}]', "either a user or a group"),
        ('allow = [{user = "a", group = "b"}]', "either a user or a group"),
        ('allow = [{user = "a", tenants = ["b"]}]', "unknown key 'tenants'"),
        ('allow = [{user = "a", domains = "tenant-a"}]', "'domains' must be a list"),
        ('allow = [{user = "a", encoders = []}]', "'encoders' must be a list"),
        ('allow = ["enc-a"]', "must be a table"),
        ('deny = [{user = "a"}]', "unknown key 'deny'"),
    ],
)
def test_a_bad_rule_names_the_setting(tmp_path: Path, text: str, message: str) -> None:
    file = tmp_path / "agent.toml"
    file.write_text(f"[local_api]\n{text}\n")
    with pytest.raises(ConfigError, match=f"setting 'local_api' \\(from {file}\\) .*{message}"):
        load_config(file, env={})
