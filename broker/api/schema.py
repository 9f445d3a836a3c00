"""Request validation against a small JSON Schema subset.

The same schema dicts feed ``/v1/openapi.json``, so the document cannot drift from
what the handlers accept. Supported: object (properties, required,
additionalProperties: false), array (items, minItems, maxItems), string (minLength,
maxLength, pattern, enum, format date-time), integer (minimum, maximum), boolean,
nullable via ``type: [..., "null"]``.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from broker.errors import ValidationFailed
from shared.names import NAME_MAX, NAME_PATTERN
from shared.timefmt import parse_ts

Schema = dict[str, Any]

ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
# The one name rule, shared with the agent (see shared/names.py).
NAME = {"type": "string", "minLength": 1, "maxLength": NAME_MAX, "pattern": NAME_PATTERN}
SERIAL = {"type": "string", "minLength": 1, "maxLength": 128, "pattern": r"^[A-Za-z0-9._:-]+$"}
LICENCE_TYPE = {"type": "string", "minLength": 1, "maxLength": 64, "pattern": r"^[a-z0-9-]+$"}
ID = {"type": "string", "pattern": ID_PATTERN}
TIMESTAMP = {"type": "string", "format": "date-time"}


def obj(required: dict[str, Schema], optional: dict[str, Schema] | None = None) -> Schema:
    """An object schema that refuses unknown members."""
    return {
        "type": "object",
        "properties": {**required, **(optional or {})},
        "required": list(required),
        "additionalProperties": False,
    }


def integer(lo: int, hi: int) -> Schema:
    return {"type": "integer", "minimum": lo, "maximum": hi}


def array(items: Schema, lo: int = 0, hi: int = 1000) -> Schema:
    return {"type": "array", "items": items, "minItems": lo, "maxItems": hi}


_SURROGATE = re.compile("[\ud800-\udfff]")


@lru_cache(maxsize=256)
def _pattern(text: str) -> re.Pattern[str]:
    return re.compile(text)


_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "boolean": (bool,),
    "null": (type(None),),
}


def _type_ok(value: Any, kind: str) -> bool:
    if kind == "integer" and isinstance(value, bool):
        return False
    return isinstance(value, _TYPES[kind])


def _check(value: Any, schema: Schema, path: str, errors: list[dict[str, str]]) -> None:
    kinds = schema.get("type", [])
    kinds = [kinds] if isinstance(kinds, str) else kinds
    if kinds and not any(_type_ok(value, k) for k in kinds):
        want = " or ".join("a number" if k == "integer" else f"a {k}" for k in kinds)
        if kinds == ["integer"]:
            want = "a whole number"
        errors.append({"field": path, "message": f"must be {want}"})
        return
    if value is None:
        return
    if isinstance(value, dict):
        props: dict[str, Schema] = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                errors.append({"field": _join(path, name), "message": "is required"})
        for name, item in value.items():
            if name in props:
                _check(item, props[name], _join(path, name), errors)
            elif schema.get("additionalProperties") is False:
                errors.append({"field": _join(path, str(name)[:64]), "message": "is not a known field"})
    elif isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            errors.append({"field": path, "message": f"needs at least {schema['minItems']} item(s)"})
        if len(value) > schema.get("maxItems", 10**9):
            errors.append({"field": path, "message": f"takes at most {schema['maxItems']} items"})
        else:
            for i, item in enumerate(value):
                _check(item, schema.get("items", {}), f"{path}[{i}]", errors)
    elif isinstance(value, str):
        if _SURROGATE.search(value):
            # JSON's \ud800 escapes decode to lone surrogates: not text, and not storable.
            errors.append({"field": path, "message": "is not valid Unicode text"})
        elif "enum" in schema and value not in schema["enum"]:
            errors.append({"field": path, "message": f"must be one of: {', '.join(schema['enum'])}"})
        elif len(value) < schema.get("minLength", 0):
            errors.append({"field": path, "message": "must not be empty" if schema.get("minLength") == 1
                           else f"needs at least {schema['minLength']} characters"})
        elif len(value) > schema.get("maxLength", 10**9):
            errors.append({"field": path, "message": f"takes at most {schema['maxLength']} characters"})
        elif "pattern" in schema and not _pattern(schema["pattern"]).search(value):
            message = schema.get("x-pattern-message", "has characters that are not allowed")
            errors.append({"field": path, "message": message})
        elif schema.get("format") == "date-time":
            try:
                parse_ts(value)
            except (ValueError, OverflowError, OSError):
                message = "must be an RFC 3339 timestamp such as 2027-01-31T00:00:00Z"
                errors.append({"field": path, "message": message})
    elif isinstance(value, int):
        if value < schema.get("minimum", -(2**63)) or value > schema.get("maximum", 2**63 - 1):
            bounds = f"{schema.get('minimum')} and {schema.get('maximum')}"
            errors.append({"field": path, "message": f"must be between {bounds}"})


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def validate(value: Any, schema: Schema) -> dict[str, Any]:
    """Return ``value`` if it matches ``schema``; else raise ``ValidationFailed`` listing each field."""
    errors: list[dict[str, str]] = []
    _check(value, schema, "", errors)
    if errors:
        raise ValidationFailed(errors[:50])
    assert isinstance(value, dict)
    return value
