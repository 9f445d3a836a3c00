"""One name rule and one reading of a code, for the broker and the agent alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import Config
from agent.enroll import CodeFormatError, enroll, normalise_code
from shared.codes import normalise_code as shared_normalise_code
from shared.names import is_name
from tests.conftest import Broker

# Each of these the agent accepted before it shared the broker's rule.
REFUSED = [
    "host\u0085one",  # C1 control (NEXT LINE)
    "host\x9b1m",  # C1 control (CSI)
    "evil\u202egnp.exe",  # bidi override: would read as "evilexe.png"
    "tenant\u2066a",  # bidi isolate
    "two\u2028lines",  # line separator
    "x" * 65,
]
ACCEPTED = ["enc-host-7", "Région Île-de-France — 東京", "x" * 64]


async def _code(broker: Broker) -> str:
    est = await broker.estate()
    await broker.purchase(est["id"], quantity=2)
    path = f"/v1/estates/{est['id']}/pools/{est['default_pool_id']}/auth-codes"
    made = await broker.call("POST", path, est["admin_token"], {}, 201)
    code: str = made["code"]
    return code


@pytest.mark.parametrize("name", REFUSED)
async def test_a_name_the_broker_refuses_the_agent_refuses_before_sending(
    broker: Broker, tmp_path: Path, name: str
) -> None:
    assert not is_name(name)
    code = await _code(broker)
    body = await broker.call("POST", "/v1/enroll", None, {"code": code, "name": name}, 400)
    assert body["errors"][0]["field"] == "name"
    config = Config(state_dir=tmp_path / "state")
    url = str(broker.client.make_url("")).rstrip("/")
    with pytest.raises(CodeFormatError, match="1–64 printable characters"):
        await enroll(config, code, broker_url=url, name=name)
    with pytest.raises(CodeFormatError):
        await enroll(config, code, broker_url=url, name="host", domain=name)
    # Nothing was sent: the code is still good for a name the broker takes.
    binding = (await enroll(config, code, broker_url=url, name="enc-host-7")).binding
    assert binding.name == "enc-host-7"


@pytest.mark.parametrize("name", ACCEPTED)
async def test_a_name_the_rule_accepts_the_broker_accepts(broker: Broker, name: str) -> None:
    assert is_name(name)
    code = await _code(broker)
    body = await broker.call("POST", "/v1/enroll", None, {"code": code, "name": name}, 201)
    assert body["name"] == name


@pytest.mark.parametrize(
    ("typed", "digits"),
    [
        ("48213907", "48213907"),
        ("4821 3907", "48213907"),
        ("4821-3907", "48213907"),
        (" 4821 - 3907 ", "48213907"),
        ("4821\t3907", "48213907"),
        ("4821 390", None),
        ("4821 39077", None),
        ("4821 39O7", None),
        ("４８２１３９０７", None),
    ],
)
def test_codes_as_typed(typed: str, digits: str | None) -> None:
    assert shared_normalise_code(typed) == digits
    if digits is None:
        with pytest.raises(CodeFormatError):
            normalise_code([typed])
    else:
        assert normalise_code([typed]) == digits


def test_a_code_typed_as_two_arguments() -> None:
    assert normalise_code(["4821", "3907"]) == "48213907"
