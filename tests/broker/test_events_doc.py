"""docs/events.md against the broker: every event type has an example shaped as the broker
sends it, and the documented Node.js verifier accepts a real delivery (and nothing else)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from broker.clock import ManualClock
from broker.webhooks import events
from tests.broker.estate_kit import base, enroll, estate
from tests.broker.webhook_kit import Receiver, add_endpoint, deliver, hook_broker, hooks_of, listening
from tests.conftest import Broker

DOC = Path(__file__).resolve().parents[2] / "docs" / "events.md"
_EXAMPLE = re.compile(r"^### `([a-z_.]+)`\n(.*?)```json\n(.*?)```", re.S | re.M)
_NODE = re.compile(r"<!-- verify-node:.*?-->\n```js\n(.*?)```", re.S)


def examples() -> dict[str, dict[str, Any]]:
    found = {}
    for name, _, text in _EXAMPLE.findall(DOC.read_text()):
        found[name] = json.loads(text)
    return found


def test_every_event_type_has_an_example_of_its_own_type() -> None:
    found = examples()
    assert set(found) == {*events.TYPES, events.TEST}
    for name, example in found.items():
        assert list(example) == ["type", "id", "timestamp", "data"], name
        assert example["type"] == name


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with listening() as found:
        yield found


@pytest.fixture
async def hooked(aiohttp_client: Any, config_factory: Any, clock: ManualClock, operator_token: str) -> Broker:
    return await hook_broker(aiohttp_client, config_factory, clock, operator_token)


@pytest.mark.sqlite_only  # the documents, not the store, are under test
async def test_the_examples_have_the_fields_the_broker_sends(hooked: Broker, receiver: Receiver) -> None:
    est = await estate(hooked)
    hook = await add_endpoint(hooked, est, receiver, list(events.TYPES))
    await hooked.purchase(est.id, expires_in_days=10)
    await hooks_of(hooked).scan_expiry()
    server = await enroll(hooked, est, est.default_pool)
    await hooked.call("DELETE", f"{base(est)}/servers/{server['server_id']}", est.admin, status=204)
    await hooked.call("POST", f"{base(est)}/webhooks/{hook['id']}/test", est.admin, {}, 202)
    await deliver(hooked)
    assert receiver.unverified == []
    documented = examples()
    sent = {d.payload["type"]: d.payload for d in receiver.deliveries}
    assert set(sent) == {"purchase.expiring", "server.enrolled", "code.redeemed", "server.removed", "webhook.test"}
    for name, payload in sent.items():
        assert set(payload["data"]) == set(documented[name]["data"]), name


NODE = shutil.which("node")


@pytest.mark.sqlite_only
@pytest.mark.skipif(NODE is None, reason="node is not installed")
async def test_the_documented_node_verifier_accepts_a_real_delivery(
    hooked: Broker, receiver: Receiver, tmp_path: Path
) -> None:
    match = _NODE.search(DOC.read_text())
    assert match is not None, "docs/events.md has no marked Node.js verifier"
    script = tmp_path / "verify.js"
    script.write_text(
        match.group(1)
        + """
const input = JSON.parse(require('node:fs').readFileSync(0, 'utf8'));
try {
  const event = verifyWebhook(input.secret, input.headers, Buffer.from(input.body, 'base64'));
  console.log(`verified ${event.type} ${event.id}`);
} catch (err) {
  console.log(`refused: ${err.message}`);
  process.exit(1);
}
"""
    )
    est = await estate(hooked)
    hook = await add_endpoint(hooked, est, receiver, ["server.enrolled"])
    await hooked.call("POST", f"{base(est)}/webhooks/{hook['id']}/test", est.admin, {}, 202)
    await deliver(hooked)
    d = receiver.deliveries[0]

    def run(secret: str, body: bytes, headers: dict[str, str]) -> subprocess.CompletedProcess[str]:
        given = {"secret": secret, "headers": headers, "body": base64.b64encode(body).decode()}
        assert NODE is not None
        return subprocess.run([NODE, str(script)], input=json.dumps(given), capture_output=True, text=True, timeout=30)

    ok = run(hook["secret"], d.body, d.headers)
    assert ok.returncode == 0 and ok.stdout.strip() == f"verified webhook.test {d.payload['id']}", ok
    tampered = run(hook["secret"], d.body.replace(b"a test event", b"a fake event"), d.headers)
    assert tampered.returncode == 1 and "no valid signature" in tampered.stdout
    other = run("whsec_" + base64.b64encode(b"k" * 32).decode(), d.body, d.headers)
    assert other.returncode == 1
    stale = run(
        hook["secret"], d.body, {**d.headers, "webhook-timestamp": str(int(d.headers["webhook-timestamp"]) - 3600)}
    )
    assert stale.returncode == 1 and "timestamp" in stale.stdout
