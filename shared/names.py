"""The one rule for a name a person gives: an estate, pool, admin, server or domain.

A name is 1–64 characters, none of them a C0 or C1 control, a line or paragraph
separator or a bidirectional override or isolate: a name shown to an admin must read as
what it is. The broker checks it on every request (its JSON schema is built from
``NAME_PATTERN``); the agent checks it before it spends an enrolment code on a name the
broker would refuse.
"""

from __future__ import annotations

import re

NAME_MAX = 64
# A JSON Schema (ECMA-262) pattern as well as a Python one: the OpenAPI document serves it.
# In ECMA-262 ``$`` is the end of the text; in Python it also matches before a final
# newline, so Python code matches it whole (``fullmatch``), never with ``search``.
NAME_PATTERN = r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]+$"
_NAME = re.compile(NAME_PATTERN)
_SURROGATE = re.compile("[\ud800-\udfff]")


def is_name(text: str) -> bool:
    """Whether ``text`` is a name the broker accepts."""
    return (
        1 <= len(text) <= NAME_MAX
        and _NAME.fullmatch(text) is not None
        # JSON's \ud800 escapes decode to lone surrogates: not text, and not storable.
        and _SURROGATE.search(text) is None
    )
