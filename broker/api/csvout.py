"""CSV answers for spreadsheets: ``Accept: text/csv`` on the lists that have them.

The JSON answer stays the default; CSV is chosen only when the client ranks ``text/csv``
above ``application/json`` (RFC 9110 quality values, ties to the earlier). The body is a
header row and then one row per item, RFC 4180 (the ``csv`` module, CRLF line ends),
streamed a page of the store at a time so that a list of any length never sits in
memory whole. A cell that a spreadsheet would take for a formula (it begins with ``=``,
``+``, ``-``, ``@``, a tab or a carriage return) is prefixed with a single quote, so that
a server named ``=HYPERLINK(…)`` stays text (OWASP's "CSV injection").
"""

from __future__ import annotations

import csv
import io
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from aiohttp import web

from broker.api.http import REQUEST_ID

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
PAGE = 500

# (rows of one page, the cursor of the next page or None when it was the last)
Page = tuple[Sequence[dict[str, Any]], Any]


def wants_csv(request: web.Request) -> bool:
    """True when the Accept header ranks ``text/csv`` above ``application/json``."""
    best: dict[str, float] = {}
    for position, part in enumerate(request.headers.get("Accept", "").split(",")):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        media = media.lower()
        if media in ("text/csv", "application/json") and media not in best:
            best[media] = q - position * 1e-6  # ties go to the one named first
    csv_q = best.get("text/csv", 0.0)
    return csv_q > 0 and csv_q > best.get("application/json", 0.0)


def cell(value: Any) -> str:
    """One value as a CSV cell: None is empty, booleans are true/false, formulas are defused."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def encode(rows: Iterable[Sequence[Any]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    for row in rows:
        writer.writerow([cell(v) for v in row])
    return buffer.getvalue().encode()


async def stream(
    request: web.Request,
    filename: str,
    columns: Sequence[str],
    next_page: Callable[[Any], Awaitable[Page]],
    first: Any = None,
    row: Callable[[dict[str, Any]], Sequence[Any]] | None = None,
) -> web.StreamResponse:
    """Write a CSV answer: the header, then ``next_page(cursor)`` page after page from ``first``.

    The first page is read before anything is sent, so that a bad request or an unknown
    estate still answers with a problem, not a broken CSV. ``row`` turns an item into its
    cells (default: the item's values under ``columns``).
    """
    to_cells = row or (lambda item: [item.get(c) for c in columns])
    items, cursor = await next_page(first)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8; header=present",
            "Content-Disposition": f'attachment; filename="{filename}"',
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer",
            "X-Request-Id": request.get(REQUEST_ID, ""),
        }
    )
    await response.prepare(request)
    await response.write(encode([columns]))
    while True:
        if items:
            await response.write(encode(to_cells(i) for i in items))
        if cursor is None:
            break
        items, cursor = await next_page(cursor)
    await response.write_eof()
    return response
