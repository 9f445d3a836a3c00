"""Request validation against a small JSON Schema subset.

The same schema dicts feed ``/v1/openapi.json``, so the document cannot drift from
what the handlers accept. Supported: object (properties, required,
additionalProperties: false or a schema for every other member, with
propertyNames and maxProperties), array (items, minItems, maxItems), string (minLength,
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
from shared.words import count

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
    """``text``, an ECMA-262 pattern as JSON Schema (and so the OpenAPI document) speaks it, for Python.

    JSON Schema searches for a pattern anywhere, so ours are anchored ``^…$``. ECMA-262's
    ``$`` is the end of the text, but Python's also matches before a final newline, which
    would let ``"one-in-one-out\\n"`` through: a final ``$`` becomes ``\\Z``.
    """
    if text.endswith("$") and not text.endswith("\\$"):
        text = text[:-1] + r"\Z"
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
    """Append to ``errors`` each way ``value`` (at ``path``) breaks ``schema``."""
    wrong_type = _type_problem(value, schema)
    if wrong_type is not None:
        errors.append({"field": path, "message": wrong_type})
        return
    # By the value's own kind (a bool is an int here; boolean schemas carry no bounds).
    if isinstance(value, dict):
        _check_object(value, schema, path, errors)
    elif isinstance(value, list):
        _check_array(value, schema, path, errors)
    elif isinstance(value, str):
        message = _string_problem(value, schema)
        if message is not None:
            errors.append({"field": path, "message": message})
    elif isinstance(value, int):
        _check_integer(value, schema, path, errors)


def _type_problem(value: Any, schema: Schema) -> str | None:
    kinds = schema.get("type", [])
    kinds = [kinds] if isinstance(kinds, str) else kinds
    if not kinds or any(_type_ok(value, k) for k in kinds):
        return None
    if kinds == ["integer"]:
        return "must be a whole number"
    return "must be " + " or ".join("a number" if k == "integer" else f"a {k}" for k in kinds)


def _check_object(value: dict[str, Any], schema: Schema, path: str, errors: list[dict[str, str]]) -> None:
    props: dict[str, Schema] = schema.get("properties", {})
    for name in schema.get("required", []):
        if name not in value:
            errors.append({"field": _join(path, name), "message": "is required"})
    if len(value) > schema.get("maxProperties", 10**9):
        errors.append({"field": path, "message": f"takes at most {schema['maxProperties']} members"})
        return
    extra = schema.get("additionalProperties")
    for name, item in value.items():
        if name in props:
            _check(item, props[name], _join(path, name), errors)
        elif extra is False:
            errors.append({"field": _join(path, str(name)[:64]), "message": "is not a known field"})
        elif isinstance(extra, dict):
            problem = _string_problem(name, schema.get("propertyNames", {}))
            if problem is not None:
                errors.append({"field": _join(path, str(name)[:64]), "message": f"name {problem}"})
            else:
                _check(item, extra, _join(path, name), errors)


def _check_array(value: list[Any], schema: Schema, path: str, errors: list[dict[str, str]]) -> None:
    if len(value) < schema.get("minItems", 0):
        errors.append({"field": path, "message": f"needs at least {count(schema['minItems'], 'item')}"})
    if len(value) > schema.get("maxItems", 10**9):
        # Too long to be worth walking: the items are not checked.
        errors.append({"field": path, "message": f"takes at most {schema['maxItems']} items"})
    else:
        for i, item in enumerate(value):
            _check(item, schema.get("items", {}), f"{path}[{i}]", errors)


def _string_problem(value: str, schema: Schema) -> str | None:
    """The first rule of ``schema`` that ``value`` breaks, as a message; a string gets one at most."""
    if _SURROGATE.search(value):
        # JSON's \ud800 escapes decode to lone surrogates: not text, and not storable.
        return "is not valid Unicode text"
    if "enum" in schema and value not in schema["enum"]:
        return f"must be one of: {', '.join(schema['enum'])}"
    if len(value) < schema.get("minLength", 0):
        if schema.get("minLength") == 1:
            return "must not be empty"
        return f"needs at least {schema['minLength']} characters"
    if len(value) > schema.get("maxLength", 10**9):
        return f"takes at most {schema['maxLength']} characters"
    if "pattern" in schema and not _pattern(schema["pattern"]).search(value):
        message: str = schema.get("x-pattern-message", "has characters that are not allowed")
        return message
    if schema.get("format") == "date-time":
        try:
            parse_ts(value)
        except (ValueError, OverflowError, OSError):
            return "must be an RFC 3339 timestamp such as 2027-01-31T00:00:00Z"
    return None


def _check_integer(value: int, schema: Schema, path: str, errors: list[dict[str, str]]) -> None:
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
    if not isinstance(value, dict):
        raise ValidationFailed([{"field": "", "message": "must be a JSON object"}])
    return value
