"""The console's static files: every one served, hardened, and nothing outside the folder."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from broker.console import CSP, STATIC, static_assets
from tests.conftest import Broker

TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
# `import … from './x.js'` and `import './x.js'`: the console's modules only import each other.
IMPORT = re.compile(r"""^(?:import|export)\s[^;'"]*?\bfrom\s*['"]([^'"]+)['"]|^import\s*['"]([^'"]+)['"]""", re.M)


async def test_every_static_file_is_served_with_its_type_and_the_csp(broker: Broker) -> None:
    files = [p for p in STATIC.rglob("*") if p.is_file()]
    assert any(p.parent.name == "pages" for p in files), "expected the modules under js/pages/"
    for path in files:
        rel = path.relative_to(STATIC).as_posix()
        r = await broker.client.get("/console/" if rel == "index.html" else f"/console/{rel}")
        assert r.status == 200, rel
        assert r.content_type == TYPES[path.suffix] and r.charset == "utf-8", rel
        assert await r.read() == path.read_bytes(), rel
        assert r.headers["Content-Security-Policy"] == CSP, rel
        assert r.headers["X-Frame-Options"] == "DENY", rel
        assert r.headers["X-Content-Type-Options"] == "nosniff", rel
        assert r.headers["Cache-Control"] == "no-cache", rel


async def test_every_module_import_resolves_to_a_served_file(broker: Broker) -> None:
    modules = sorted(STATIC.rglob("*.js"))
    seen = 0
    for module in modules:
        for spec in (a or b for a, b in IMPORT.findall(module.read_text())):
            assert spec.startswith(("./", "../")) and spec.endswith(".js"), (module, spec)
            target = (module.parent / spec).resolve()
            assert target.is_relative_to(STATIC.resolve()), (module, spec)
            r = await broker.client.get("/console/" + target.relative_to(STATIC.resolve()).as_posix())
            assert r.status == 200 and r.content_type == "text/javascript", (module, spec)
            seen += 1
    assert seen >= len(modules) - 1  # every module but the entry point is imported somewhere


async def _raw_get(broker: Broker, target: str) -> tuple[int, bytes]:
    """GET ``target`` byte for byte: no client-side normalisation of ``..`` or escapes."""
    server = broker.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=5)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def test_no_path_reaches_outside_the_static_folder(broker: Broker) -> None:
    outside = (STATIC.parent / "__init__.py").read_bytes()
    attempts = [
        "/console/../console/__init__.py",
        "/console/js/../../__init__.py",
        "/console/js/pages/../../../__init__.py",
        "/console/js/..%2f..%2f__init__.py",
        "/console/%2e%2e/__init__.py",
        "/console/js/%2e%2e/%2e%2e/sessions.py",
        "/console/..%5c__init__.py",
        "/console/js/%2E%2E%2F%2E%2E%2F__init__.py",
        "/console//etc/passwd",
        "/console/js/../../../../../../../../etc/passwd",
        "/console/js/",
        "/console/js",
    ]
    for target in attempts:
        status, body = await _raw_get(broker, target)
        assert status in (400, 404), (target, status)
        assert b"import hmac" not in body and b"root:" not in body, target
        assert outside[:200] not in body, target
    # Inside the folder a `..` may resolve, but only onto a file the console serves anyway.
    status, body = await _raw_get(broker, "/console/js/../console.js")
    assert status in (200, 404)
    if status == 200:
        assert body == (STATIC / "console.js").read_bytes()


def test_only_visible_files_of_a_known_type_are_assets(tmp_path: Path) -> None:
    for name in (
        "index.html",
        "js/a.js",
        "js/pages/b.js",
        "js/.c.js.swp",
        ".git/x.js",
        "js/.hidden/d.js",
        "notes.txt",
        "js/e.py",
    ):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    assert sorted(static_assets(tmp_path)) == ["index.html", "js/a.js", "js/pages/b.js"]
