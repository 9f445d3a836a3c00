"""Log lines for both programs: ``text`` for a person at a terminal, ``json`` for a shipper.

``setup(level, log_format)`` configures the root logger once. A JSON line is one object:
``ts`` (UTC, RFC 3339), ``level``, ``logger``, ``msg``, the request fields below when the
record carries them (``logger.info(..., extra={"request_id": ...})``), and ``exc`` (the
whole traceback as one string) — never several lines, so that a shipper keeps a record
whole. Callers put no token, code or body in a message or a field: nothing here can tell
one from an id.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from datetime import UTC, datetime
from typing import TextIO

FORMATS = ("auto", "text", "json")

# The fields a request line may carry, in the order a JSON line shows them.
REQUEST_FIELDS = (
    "request_id",
    "method",
    "route",
    "status",
    "duration_ms",
    "client",
    "estate",
    "principal_kind",
    "principal_id",
)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in REQUEST_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                line[name] = value
        if record.exc_info and record.exc_info[0] is not None:
            line["exc"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        elif record.exc_text:
            line["exc"] = record.exc_text
        return json.dumps(line, ensure_ascii=False, default=str)


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler ``setup`` installs, told apart from any other (a test's, say)."""


def resolve(log_format: str, stream: TextIO) -> str:
    """``auto`` is ``text`` at a terminal and ``json`` anywhere else (a journal, a file, a pipe)."""
    if log_format != "auto":
        return log_format
    return "text" if stream.isatty() else "json"


def setup(
    level: str,
    log_format: str = "auto",
    stream: TextIO | None = None,
    text: str = "%(levelname)s %(name)s: %(message)s",
) -> None:
    """Send every logger's records at ``level`` or above to ``stream`` (stderr) as
    ``log_format``; a ``text`` line is ``text``, after the time unless systemd's journal
    (which stamps each line itself) is reading it."""
    stream = stream if stream is not None else sys.stderr
    handler = _Handler(stream)
    if resolve(log_format, stream) == "json":
        handler.setFormatter(JsonFormatter())
    else:
        fmt = text
        if not os.environ.get("JOURNAL_STREAM"):
            fmt = "%(asctime)s " + fmt
        handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    for old in root.handlers[:]:
        if isinstance(old, _Handler):  # a second setup replaces the first; others' handlers stay
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


class MalformedRequests(logging.Filter):
    """Turn aiohttp's ``ERROR Error handling request`` + traceback for a request it could
    not parse (a NUL byte in a header, a bad request line) into one WARNING line: the fault
    is the client's, and the broker has nothing to fix. Other errors pass unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.msg, record.args = (
                "malformed request from %s: %s",
                (remote, " ".join(str(exc.message or type(exc).__name__).split())),
            )
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


def quiet_malformed_requests() -> None:
    """Install ``MalformedRequests`` on aiohttp's server logger (once)."""
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequests) for f in server.filters):
        server.addFilter(MalformedRequests())
