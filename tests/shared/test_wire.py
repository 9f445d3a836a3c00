"""The one Lease type: what the broker sends, what the agent reads, what OpenAPI documents."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from broker.api.openapi import document
from shared.secret import Secret
from shared.wire import Lease
from tests.broker.leasing import make_site
from tests.conftest import Broker

_WIRE_TYPES = {"str": "string", "Secret": "string", "int": "integer"}


def _lease_schemas() -> list[dict[str, Any]]:
    paths = document()["paths"]
    return [
        paths["/v1/leases"]["post"]["responses"][status]["content"]["application/json"]["schema"]
        for status in ("200", "201")
    ] + [paths["/v1/leases/{lease}/renew"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]]


def test_the_openapi_lease_schema_is_the_dataclass() -> None:
    fields = dataclasses.fields(Lease)
    for schema in _lease_schemas():
        assert list(schema["properties"]) == [f.name for f in fields]
        assert schema["required"] == [f.name for f in fields]
        for f in fields:
            documented = schema["properties"][f.name]
            if f.metadata.get("wire") == "date-time":
                assert documented == {"type": "string", "format": "date-time"}, f.name
            elif str(f.type).startswith("tuple"):
                assert documented["type"] == "array", f.name
            else:
                assert documented["type"] == _WIRE_TYPES[str(f.type)], f.name


async def test_what_the_broker_sends_the_agent_reads_back_unchanged(broker: Broker) -> None:
    site = await make_site(broker, [("SO-1", 2, 365, "one-in-one-out")])
    sent = await site.acquire("E1", 2, status=201)
    lease = Lease.from_json(sent)
    assert lease.to_json() == sent
    assert (lease.id, lease.count, lease.encoder) == (sent["id"], 2, "E1")
    assert lease.expires_at - lease.server_time == lease.lease_seconds == 3600
    renewed = await site.renew(lease.id, status=200)
    assert Lease.from_json(renewed).to_json() == renewed


def _answer(**changes: Any) -> dict[str, Any]:
    lease = Lease(
        id="lse_1",
        token=Secret("a.b.c"),
        encoder="E1",
        licence_type="one-in-one-out",
        count=1,
        pool_id="pool_1",
        expires_at=1_800_003_600,
        renew_after=1_800_001_200,
        lease_seconds=3600,
        server_time=1_800_000_000,
        state="valid",
        seats=(),
    )
    return {**lease.to_json(), **changes}


@pytest.mark.parametrize(
    "changes",
    [
        {"count": True},
        {"count": "1"},
        {"token": None},
        {"seats": {}},
        {"seats": ["x"]},
        {"expires_at": 1_800_003_600},
        {"server_time": "yesterday"},
        {"pool_id": 7},
    ],
)
def test_a_garbled_answer_is_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Lease.from_json(_answer(**changes))


@pytest.mark.parametrize("missing", ["id", "token", "server_time", "seats", "lease_seconds"])
def test_an_answer_missing_a_field_is_refused(missing: str) -> None:
    answer = _answer()
    del answer[missing]
    with pytest.raises(KeyError):
        Lease.from_json(answer)


def test_the_token_never_shows_itself() -> None:
    assert "a.b.c" not in repr(Lease.from_json(_answer()))
