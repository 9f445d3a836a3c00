"""The error body's shape, pinned (as datasette's test_error_shape): every failure is
problem+json with a stable code, never a 500, never a traceback."""

from __future__ import annotations

import json
import re

import pytest

from broker import errors
from broker.api.http import MAX_BODY
from tests.broker.estate_kit import assert_problem, base, estate, raw
from tests.conftest import Broker


async def test_validation_error_shape_is_pinned(broker: Broker) -> None:
    r = await raw(broker, "POST", "/v1/estates", broker.operator, json.dumps({"name": 5}))
    body = assert_problem(r, 400, "validation_error")
    assert set(body) == {"type", "title", "status", "code", "detail", "errors"}
    assert body["type"] == "https://tenure.dev/problems/validation_error"
    fields = {e["field"]: e["message"] for e in body["errors"]}
    assert fields == {"name": "must be a string", "admin_name": "is required"}
    assert all(set(e) == {"field", "message"} for e in body["errors"])
    assert r.headers["X-Content-Type-Options"] == "nosniff"


async def test_not_found_shape_is_pinned(broker: Broker) -> None:
    r = await raw(broker, "GET", "/v1/estates/est_nope/pools", broker.operator)
    body = assert_problem(r, 404, "not_found")
    assert set(body) == {"type", "title", "status", "code", "detail"}


@pytest.mark.parametrize(
    "payload, field, message",
    [
        ("{", "", "the body is not valid JSON"),
        ("{'name': 'x'}", "", "the body is not valid JSON"),
        ('{"name": NaN, "admin_name": "a"}', "", "the body is not valid JSON"),
        ("[1, 2]", "", "the body must be a JSON object"),
        ('"just a string"', "", "the body must be a JSON object"),
        ("[" * 100_000 + "]" * 100_000, None, None),  # deep nesting; also over the cap
        ('{"name": "x"}', "admin_name", "is required"),
        ('{"name": "x", "admin_name": "a", "colour": "red"}', "colour", "is not a known field"),
        ('{"name": "", "admin_name": "a"}', "name", "must not be empty"),
        ('{"name": "' + "x" * 65 + '", "admin_name": "a"}', "name", "takes at most 64 characters"),
        ('{"name": "a\\u0000b", "admin_name": "a"}', "name", "has characters that are not allowed"),
        ('{"name": "a\\nb", "admin_name": "a"}', "name", "has characters that are not allowed"),
        ('{"name": "a\\u0085b", "admin_name": "a"}', "name", "has characters that are not allowed"),
        ('{"name": "evil\\u202egnp.exe", "admin_name": "a"}', "name", "has characters that are not allowed"),
        ('{"name": "a\\u2028b", "admin_name": "a"}', "name", "has characters that are not allowed"),
        ('{"name": ["x"], "admin_name": "a"}', "name", "must be a string"),
        ('{"name": null, "admin_name": "a"}', "name", "must be a string"),
        ('{"name": "x", "admin_name": true}', "admin_name", "must be a string"),
    ],
)
async def test_bad_bodies_are_validation_errors(
    broker: Broker, payload: str, field: str | None, message: str | None
) -> None:
    r = await raw(broker, "POST", "/v1/estates", broker.operator, payload.encode())
    if len(payload) > MAX_BODY:
        assert_problem(r, 413, "payload_too_large")
        return
    body = assert_problem(r, 400, "validation_error")
    assert {"field": field, "message": message} in body["errors"], body


async def test_lone_surrogate_in_a_name_is_refused_not_a_500(broker: Broker) -> None:
    r = await raw(broker, "POST", "/v1/estates", broker.operator, b'{"name": "bad \\ud800 name", "admin_name": "a"}')
    body = assert_problem(r, 400, "validation_error")
    assert body["errors"][0]["field"] == "name"


async def test_invalid_utf8_is_refused(broker: Broker) -> None:
    r = await raw(broker, "POST", "/v1/estates", broker.operator, b'{"name": "\xff\xfe", "admin_name": "a"}')
    assert_problem(r, 400, "validation_error")


@pytest.mark.parametrize(
    "quantity, message",
    [
        (0, "must be between 1 and 10000000"),
        (10_000_001, "must be between 1 and 10000000"),
        (-5, "must be between 1 and 10000000"),
        (1.5, "must be a whole number"),
        ("10", "must be a whole number"),
        (True, "must be a whole number"),
        (10**400, "must be between 1 and 10000000"),
    ],
)
async def test_wrong_types_and_ranges_name_the_field(broker: Broker, quantity: object, message: str) -> None:
    est = await estate(broker)
    payload = {
        "sales_order": "SO-1",
        "licence_type": "one-in-one-out",
        "quantity": quantity,
        "expires_at": "2028-01-01T00:00:00Z",
    }
    r = await raw(broker, "POST", f"{base(est)}/purchases", broker.operator, json.dumps(payload))
    body = assert_problem(r, 400, "validation_error")
    assert body["errors"] == [{"field": "quantity", "message": message}]


async def test_huge_integer_literal_is_not_a_500(broker: Broker) -> None:
    est = await estate(broker)
    payload = (
        '{"sales_order": "SO-1", "licence_type": "x", "quantity": '
        + "9" * 5000
        + ', "expires_at": "2028-01-01T00:00:00Z"}'
    )
    r = await raw(broker, "POST", f"{base(est)}/purchases", broker.operator, payload)
    assert_problem(r, 400, "validation_error")


@pytest.mark.parametrize(
    "expires_at", ["tomorrow", "2028-01-01", "2028-01-01T00:00:00", "2028-13-01T00:00:00Z", "9999-12-31T23:59:59Z", ""]
)
async def test_bad_timestamps_are_validation_errors(broker: Broker, expires_at: str) -> None:
    est = await estate(broker)
    payload = {"sales_order": "SO-1", "licence_type": "one-in-one-out", "quantity": 1, "expires_at": expires_at}
    r = await raw(broker, "POST", f"{base(est)}/purchases", broker.operator, json.dumps(payload))
    body = assert_problem(r, 400, "validation_error")
    assert body["errors"][0]["field"] == "expires_at"


async def test_nested_fields_are_named_with_their_path(broker: Broker) -> None:
    est = await estate(broker)
    r = await raw(
        broker,
        "POST",
        f"{base(est)}/moves",
        est.admin,
        json.dumps(
            {
                "from_pool": est.default_pool,
                "to_pool": est.default_pool,
                "items": [{"purchase_id": "pur_1", "count": 1}, {"purchase_id": "pur_2", "count": "2", "x": 1}],
            }
        ),
    )
    body = assert_problem(r, 400, "validation_error")
    fields = {e["field"] for e in body["errors"]}
    assert fields == {"items[1].count", "items[1].x"}


async def test_oversized_body_is_413(broker: Broker) -> None:
    big = json.dumps({"name": "x" * (MAX_BODY + 10), "admin_name": "a"})
    r = await raw(broker, "POST", "/v1/estates", broker.operator, big)
    assert_problem(r, 413, "payload_too_large")


async def test_oversized_chunked_body_is_413(broker: Broker) -> None:
    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(20):
            yield b" " * 8192

    resp = await broker.client.post(
        "/v1/estates", data=chunks(), headers={"Authorization": f"Bearer {broker.operator}"}
    )
    assert resp.status == 413
    assert (await resp.json())["code"] == "payload_too_large"


async def test_oversized_body_on_a_patch_is_413(broker: Broker) -> None:
    est = await estate(broker)
    big = json.dumps({"name": "x" * (MAX_BODY + 10)})
    r = await raw(broker, "PATCH", f"{base(est)}/pools/{est.default_pool}", est.admin, big)
    assert_problem(r, 413, "payload_too_large")


async def test_body_just_under_the_cap_is_read(broker: Broker) -> None:
    pad = " " * (MAX_BODY - 200)
    r = await raw(broker, "POST", "/v1/estates", broker.operator, '{"name": "Big", "admin_name": "a"}' + pad)
    assert r.status == 201, r.text


@pytest.mark.parametrize(
    "path",
    [
        "/v1/estates/est_nope",
        "/v1/estates/est_nope/pools",
        "/v1/estates/..%2F..%2Fetc%2Fpasswd/pools",
        "/v1/estates/%2e%2e/pools",
        "/v1/estates/a%00b/pools",
        "/v1/estates/" + "a" * 65 + "/pools",
        "/v1/estates/est_x%20or%201=1/purchases",
        "/v1/nothing-here",
        "/v1/estates/est_x/pools/pool_y/nope",
        "/",
    ],
)
async def test_unknown_and_odd_paths_are_404(broker: Broker, path: str) -> None:
    r = await raw(broker, "GET", path, broker.operator)
    assert_problem(r, 404, "not_found")


async def test_traversal_looking_ids_inside_an_estate_are_404(broker: Broker) -> None:
    est = await estate(broker)
    for path in (
        f"{base(est)}/pools/..%2F{est.default_pool}",
        f"{base(est)}/pools/%2E%2E",
        f"{base(est)}/pools/pool_zzz",
        f"{base(est)}/servers/srv_..",
        f"{base(est)}/auth-codes/c%27%3B--",
    ):
        r = await raw(broker, "DELETE" if "auth-codes" in path or "servers" in path else "GET", path, est.admin)
        assert_problem(r, 404, "not_found")


async def test_method_not_allowed_is_a_problem(broker: Broker) -> None:
    r = await raw(broker, "PUT", "/v1/estates", broker.operator, "{}")
    body = assert_problem(r, 405, "method_not_allowed")
    assert body["status"] == 405
    assert "POST" in r.headers["Allow"]


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Bearer tnr_adm_garbage",
        "Bearer tnr_op_" + "x" * 43,
        "bearer not-a-token-at-all",
        "Token abc",
    ],
)
async def test_missing_or_garbage_token_is_401(broker: Broker, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    r = await raw(broker, "GET", "/v1/me", headers=headers)
    assert_problem(r, 401, "unauthenticated")
    r = await raw(broker, "POST", "/v1/estates", data="{", headers=headers)
    assert_problem(r, 401, "unauthenticated")


async def test_wrong_kind_of_token_is_403(broker: Broker) -> None:
    est = await estate(broker)
    r = await raw(broker, "POST", "/v1/estates", est.admin, json.dumps({"name": "x", "admin_name": "y"}))
    assert_problem(r, 403, "forbidden")


async def test_unknown_ids_in_bodies_are_404(broker: Broker) -> None:
    est = await estate(broker)
    r = await raw(
        broker,
        "POST",
        f"{base(est)}/moves",
        est.admin,
        json.dumps(
            {"from_pool": est.default_pool, "to_pool": "pool_missing", "items": [{"purchase_id": "pur_x", "count": 1}]}
        ),
    )
    assert_problem(r, 404, "not_found")


async def test_idempotency_key_that_is_too_long_is_a_validation_error(broker: Broker) -> None:
    r = await raw(
        broker,
        "POST",
        "/v1/estates",
        broker.operator,
        json.dumps({"name": "x", "admin_name": "y"}),
        headers={"Idempotency-Key": "k" * 256},
    )
    body = assert_problem(r, 400, "validation_error")
    assert body["errors"][0]["field"] == "Idempotency-Key"


async def test_bad_query_values_are_validation_errors(broker: Broker) -> None:
    est = await estate(broker)
    for query in ("limit=0", "limit=abc", "limit=501", "after=-1", "pool=..%2F", "action=DROP%20TABLE"):
        r = await raw(broker, "GET", f"{base(est)}/events?{query}", est.admin)
        assert_problem(r, 400, "validation_error")


async def test_an_unexpected_failure_is_a_generic_500_without_details(broker: Broker) -> None:
    from broker.services import SERVICES

    svc = broker.client.app[SERVICES]

    class Broken:
        def __getattr__(self, name: str) -> object:
            raise RuntimeError("secret internals /etc/shadow")

    real, svc.store = svc.store, Broken()  # type: ignore[assignment]
    try:
        r = await raw(broker, "GET", "/healthz")
    finally:
        svc.store = real
    body = assert_problem(r, 500, "internal_error")
    assert "secret internals" not in r.text and "/etc/shadow" not in r.text
    assert body["detail"] == "Something went wrong on the broker; it is logged."


def _drawn_tree() -> dict[str, tuple[str | None, int, str]]:
    """Class → (parent, status, code) as the errors module's docstring draws them."""
    drawn: dict[str, tuple[str | None, int, str]] = {}
    stack: list[str] = []
    for line in (errors.__doc__ or "").splitlines():
        match = re.match(r"^ {4}([│├└─ ]*)(\w+)\s+(\d{3}) (\w+)", line)
        if not match:
            continue
        depth = len(match.group(1)) // 4
        del stack[depth:]
        drawn[match.group(2)] = (stack[-1] if stack else None, int(match.group(3)), match.group(4))
        stack.append(match.group(2))
    return drawn


def test_the_errors_docstring_draws_every_error_class() -> None:
    import broker.app  # noqa: F401 - imports every module that defines an error

    real: dict[str, tuple[str | None, int, str]] = {}
    todo = [errors.TenureError]
    while todo:
        cls = todo.pop()
        parent = cls.__base__.__name__ if cls is not errors.TenureError else None
        real[cls.__name__] = (parent, cls.status, cls.code)
        todo.extend(cls.__subclasses__())
    assert _drawn_tree() == real
