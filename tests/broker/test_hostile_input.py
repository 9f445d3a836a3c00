"""Input a client did not mean, or meant to break with: 400 or 404 with a stable code, never a 500.

Non-ASCII digits in a number (``²``, ``٣``, ``３``), a trailing newline that a Python ``$``
lets through a pattern, and ISO 8601 forms outside RFC 3339.
"""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from shared.names import is_name
from tests.broker.estate_kit import assert_problem, base, enroll, estate, raw
from tests.conftest import Broker

# Superscript two (isdigit, not int), Arabic-Indic three and fullwidth three (int takes them),
# and forms int() reads that a number in a URL is not.
NOT_NUMBERS = ["²", "٣", "３", "+3", " 3", "3\n", "-1", "1_0"]
PAGED = ["leases", "events", "pools", "servers", "admins", "purchases", "auth-codes"]


@pytest.mark.parametrize("value", NOT_NUMBERS)
@pytest.mark.parametrize("path", PAGED)
async def test_limit_takes_ascii_digits_only(broker: Broker, path: str, value: str) -> None:
    est = await estate(broker)
    r = await raw(broker, "GET", f"{base(est)}/{path}?limit={quote(value)}", est.admin)
    body = assert_problem(r, 400, "validation_error")
    assert body["errors"][0]["field"] == "limit"


async def test_events_cursor_takes_ascii_digits_only(broker: Broker) -> None:
    est = await estate(broker)
    for value in ("²", "٣"):
        r = await raw(broker, "GET", f"{base(est)}/events?after={quote(value)}", est.admin)
        assert_problem(r, 400, "validation_error")


@pytest.mark.parametrize("name", ["Paris\n", "Paris\r\n", "\nParis"])
def test_a_name_with_a_newline_is_not_a_name(name: str) -> None:
    assert not is_name(name)


@pytest.mark.parametrize("name", ["Paris\n", "\nParis"])
async def test_pool_and_estate_names_with_a_trailing_newline_are_refused(broker: Broker, name: str) -> None:
    est = await estate(broker)
    r = await raw(broker, "POST", f"{base(est)}/pools", est.admin, json.dumps({"name": name}))
    assert assert_problem(r, 400, "validation_error")["errors"][0]["field"] == "name"
    r = await raw(broker, "POST", "/v1/estates", broker.operator, json.dumps({"name": name, "admin_name": "A"}))
    assert_problem(r, 400, "validation_error")


async def test_licence_type_and_serial_with_a_trailing_newline_are_refused(broker: Broker) -> None:
    est = await estate(broker)
    body = {
        "sales_order": "SO-1",
        "licence_type": "one-in-one-out\n",
        "quantity": 3,
        "expires_at": "2028-01-01T00:00:00Z",
    }
    r = await raw(broker, "POST", f"{base(est)}/purchases", broker.operator, json.dumps(body))
    assert assert_problem(r, 400, "validation_error")["errors"][0]["field"] == "licence_type"
    await broker.purchase(est.id, quantity=3)
    server = await enroll(broker, est, est.default_pool)
    acquire = {"encoder": "ENC-1\n", "licence_type": "one-in-one-out", "count": 1}
    r = await raw(broker, "POST", "/v1/leases", server["server_token"], json.dumps(acquire))
    assert assert_problem(r, 400, "validation_error")["errors"][0]["field"] == "encoder"
    r = await raw(broker, "GET", f"{base(est)}/leases?encoder={quote('ENC-1' + chr(10))}", est.admin)
    assert_problem(r, 400, "validation_error")


async def test_an_id_with_a_trailing_newline_is_not_found(broker: Broker) -> None:
    est = await estate(broker)
    r = await raw(broker, "GET", f"{base(est)}/pools/{quote(est.default_pool + chr(10))}", est.admin)
    assert_problem(r, 404, "not_found")
    r = await raw(broker, "GET", f"{base(est)}/servers?pool={quote(est.default_pool + chr(10))}", est.admin)
    assert_problem(r, 400, "validation_error")


@pytest.mark.parametrize("expires_at", ["2028-W05-1T00:00:00Z", "2028-01-31 00:00:00Z", "2028-01-31T00:00:00Z\n"])
async def test_expiry_must_be_rfc3339(broker: Broker, expires_at: str) -> None:
    est = await estate(broker)
    body = {"sales_order": "SO-1", "licence_type": "one-in-one-out", "quantity": 3, "expires_at": expires_at}
    r = await raw(broker, "POST", f"{base(est)}/purchases", broker.operator, json.dumps(body))
    assert assert_problem(r, 400, "validation_error")["errors"][0]["field"] == "expires_at"
