"""``/v1/openapi.json`` tells the truth about the app's routes (and is valid 3.1)."""

from __future__ import annotations

import re
from typing import Any

from broker.api.http import ROUTES
from tests.conftest import Broker

METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
_PARAM = re.compile(r"\{([a-z_]+)\}")


async def document(broker: Broker) -> dict[str, Any]:
    resp = await broker.client.get("/v1/openapi.json")
    assert resp.status == 200 and resp.content_type == "application/json"
    doc: dict[str, Any] = await resp.json()
    return doc


def app_routes(broker: Broker) -> set[tuple[str, str]]:
    """(method, path) of every API route the running app serves (HEAD and the console aside)."""
    out = set()
    for resource in broker.client.app.router.resources():
        path = resource.canonical
        if path.startswith("/console"):
            continue
        for r in resource:
            if r.method not in ("HEAD", "*"):
                out.add((r.method.lower(), path))
    return out


async def test_every_route_is_documented_and_every_documented_route_exists(broker: Broker) -> None:
    doc = await document(broker)
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops if m in METHODS}
    served = app_routes(broker)
    assert served, "no routes found"
    assert served - documented == set(), "served but not documented"
    assert documented - served == set(), "documented but not served"
    assert documented == {(r.method.lower(), r.path) for r in ROUTES}


async def test_structure_is_openapi_3_1(broker: Broker) -> None:
    doc = await document(broker)
    assert doc["openapi"].startswith("3.1.")
    assert doc["info"]["title"] and doc["info"]["version"]
    schemes = doc["components"]["securitySchemes"]
    op_ids = []
    for path, ops in doc["paths"].items():
        assert path.startswith("/")
        for method, op in ops.items():
            assert method in METHODS, method
            op_ids.append(op["operationId"])
            assert op["summary"] and op["responses"]
            for status, resp in op["responses"].items():
                assert re.fullmatch(r"[1-5][0-9][0-9]", status), status
                assert resp["description"]
                for media in resp.get("content", {}).values():
                    check_schema(media["schema"])
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == set(_PARAM.findall(path)), (path, declared)
            for p in op.get("parameters", []):
                assert p["in"] in ("path", "query", "header")
                assert p["in"] != "path" or p["required"] is True
                check_schema(p["schema"])
            for req in op.get("security", []):
                assert set(req) <= set(schemes)
    assert len(op_ids) == len(set(op_ids)), "operationIds must be unique"


async def test_request_bodies_have_schemas(broker: Broker) -> None:
    doc = await document(broker)
    for r in ROUTES:
        op = doc["paths"][r.path][r.method.lower()]
        if r.body is None:
            assert "requestBody" not in op
            continue
        schema = op["requestBody"]["content"]["application/json"]["schema"]
        assert schema["type"] == "object" and schema.get("additionalProperties") is False, r.path
        check_schema(schema)
    bodies = {(r.method, r.path) for r in ROUTES if r.body is not None}
    assert ("POST", "/v1/estates") in bodies and ("POST", "/v1/estates/{estate}/moves") in bodies
    assert all(r.body is not None for r in ROUTES if r.method in ("POST", "PATCH"))


async def test_documented_schemas_match_what_the_api_answers(broker: Broker) -> None:
    """The estate answer has exactly the members its schema names."""
    doc = await document(broker)
    op = doc["paths"]["/v1/estates"]["post"]
    schema = op["responses"]["201"]["content"]["application/json"]["schema"]
    body = await broker.estate()
    assert set(body) == set(schema["properties"])
    assert set(schema["required"]) <= set(body)
    pools = await broker.call("GET", f"/v1/estates/{body['id']}/pools", body["admin_token"], status=200)
    pool_schema = doc["paths"]["/v1/estates/{estate}/pools"]["get"]["responses"]["200"]["content"]["application/json"][
        "schema"
    ]["properties"]["items"]["items"]
    assert set(pools["items"][0]) == set(pool_schema["properties"])


async def test_idempotent_posts_document_the_header(broker: Broker) -> None:
    doc = await document(broker)
    for r in ROUTES:
        if r.idempotent:
            params = doc["paths"][r.path][r.method.lower()].get("parameters", [])
            assert any(p["name"] == "Idempotency-Key" and p["in"] == "header" for p in params)


async def test_errors_are_documented_as_problems(broker: Broker) -> None:
    doc = await document(broker)
    op = doc["paths"]["/v1/estates/{estate}/moves"]["post"]
    problem = op["responses"]["409"]["content"]["application/problem+json"]["schema"]
    assert {"title", "status", "code", "detail"} <= set(problem["required"])


async def test_the_licence_policies_are_documented(broker: Broker) -> None:
    doc = await document(broker)
    paths = doc["paths"]

    def body(path: str, method: str) -> dict[str, Any]:
        schema: dict[str, Any] = paths[path][method]["requestBody"]["content"]["application/json"]["schema"]
        return schema

    assert body("/v1/leases", "post")["properties"]["encoder_kind"]["enum"] == ["hardware", "container"]
    pool_patch = body("/v1/estates/{estate}/pools/{pool}", "patch")["properties"]["soft_lock_seconds"]
    assert pool_patch["properties"]["hardware"] == {"type": "integer", "minimum": 0, "maximum": 90 * 86400}
    limits = body("/v1/estates/{estate}/servers/{server}", "patch")["properties"]["limits"]
    assert set(limits["additionalProperties"]["properties"]) == {"max", "reserved"}
    for path in ("/v1/estates/{estate}/leases/{lease}", "/v1/estates/{estate}/servers/{server}"):
        params = paths[path]["delete"]["parameters"]
        assert any(p["name"] == "override_soft_lock" and p["in"] == "query" for p in params), path
    conflicts = paths["/v1/leases"]["post"]["responses"]["409"]["description"]
    assert "server_limit" in conflicts and "reservation_exceeds_pool" in conflicts
    pool = doc["paths"]["/v1/estates/{estate}/pools/{pool}"]["get"]["responses"]["200"]["content"]
    props = pool["application/json"]["schema"]["properties"]
    assert {"soft_lock_seconds", "soft_locked", "reserved", "soft_locks", "limits"} <= set(props)


_TYPES = {"object", "array", "string", "integer", "number", "boolean", "null"}
_KEYWORDS = {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "minItems",
    "maxItems",
    "maxProperties",
    "propertyNames",
    "minLength",
    "maxLength",
    "pattern",
    "enum",
    "format",
    "minimum",
    "maximum",
    "description",
    "x-pattern-message",
}


def check_schema(schema: Any) -> None:
    """A JSON Schema (2020-12 subset) that tools can read."""
    assert isinstance(schema, dict), schema
    assert set(schema) <= _KEYWORDS, set(schema) - _KEYWORDS
    kinds = schema.get("type", [])
    for k in [kinds] if isinstance(kinds, str) else kinds:
        assert k in _TYPES, k
    for sub in schema.get("properties", {}).values():
        check_schema(sub)
    if isinstance(schema.get("additionalProperties"), dict):
        check_schema(schema["additionalProperties"])
    if "propertyNames" in schema:
        check_schema(schema["propertyNames"])
    if "items" in schema:
        check_schema(schema["items"])
    if "required" in schema:
        assert set(schema["required"]) <= set(schema.get("properties", {})), schema["required"]
    if "pattern" in schema:
        re.compile(schema["pattern"])
