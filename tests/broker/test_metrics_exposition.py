"""/metrics as Prometheus reads it: every family declared with HELP and TYPE, base-unit
names, ``process_*`` and build info, and the figures an operator pages on, checked by
Prometheus's own ``promtool check metrics`` on a real scrape (``scripts/test.sh``
installs Debian's ``prometheus`` package, which provides it, when it is missing)."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
from typing import Any

import pytest

from broker.app import create_app
from shared import __version__
from tests.conftest import Broker

PROMTOOL = shutil.which("promtool")
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*",?)*\})? (\S+)$')
SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("",), "gauge": ("",)}


async def busy_scrape(b: Broker) -> str:
    """A scrape after every kind of event the figures count has happened once at least."""
    est = await b.estate()
    await b.purchase(est["id"], quantity=5)
    base = f"/v1/estates/{est['id']}/pools/{est['default_pool_id']}"
    code = await b.call("POST", f"{base}/auth-codes", est["admin_token"], {}, 201)
    srv = await b.call("POST", "/v1/enroll", None, {"code": code["code"], "name": "h1"}, 201)
    await b.call("POST", "/v1/enroll", None, {"code": "00000000", "name": "h2"}, 403)
    await b.call("POST", "/v1/enroll", None, {"code": "00000001", "name": "h2"}, 429)  # one failure allowed
    body = {"encoder": "E1", "licence_type": "one-in-one-out", "count": 3}
    await b.call("POST", "/v1/leases", srv["server_token"], body, 201)
    b.clock.advance(3600)  # E1 is never renewed: it lapses when the pool is next written
    await b.call("POST", "/v1/leases", srv["server_token"], {**body, "encoder": "E2", "count": 2}, 201)
    resp = await b.client.get("/metrics", headers=b.auth(b.operator))
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
    return await resp.text()


@pytest.fixture
async def strict(aiohttp_client: Any, config_factory: Any, operator_token: str, clock: Any) -> Broker:
    client = await aiohttp_client(create_app(config_factory(redeem_failures_per_address=1)))
    return Broker(client, operator_token, clock)


def parse(text: str) -> dict[str, float]:
    """Strictly: HELP then TYPE before each family's samples, each family once, every
    sample of a declared family; returns every sample by its full series name."""
    declared: dict[str, str] = {}
    helped: set[str] = set()
    samples: dict[str, float] = {}
    current = ""
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert name not in helped, f"{name} declared twice"
            helped.add(name)
            current = name
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name == current and name not in declared, line
            declared[name] = kind
        else:
            m = SAMPLE.match(line)
            assert m, f"not a sample line: {line!r}"
            kind = declared[current]
            assert any(m.group(1) == current + s for s in SUFFIXES[kind]), (current, line)
            assert (m.group(1) + (m.group(2) or "")) not in samples, f"duplicate series {line}"
            samples[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    assert helped == set(declared)
    for name, kind in declared.items():
        assert (kind == "counter") == name.endswith("_total"), name
        assert "_ms" not in name and "millis" not in name, name
    return samples


async def test_the_scrape_is_well_formed_and_holds_the_operators_figures(strict: Broker) -> None:
    text = await busy_scrape(strict)
    s = parse(text)
    est = next(iter(re.findall(r'estate="([^"]+)"', text)))
    pool = next(iter(re.findall(r'pool="([^"]+)"', text)))
    labels = f'{{estate="{est}",pool="{pool}"}}'
    assert s[f"tenure_pool_seats_allocated{labels}"] == 5
    assert s[f"tenure_pool_seats_in_use{labels}"] == 2  # E1 lapsed, E2 holds 2
    assert s[f"tenure_pool_seats_available{labels}"] == 3
    assert s["tenure_leases_lapsed_total"] == 1
    assert s["tenure_codes_redeemed_total"] == 1 and s["tenure_codes_refused_total"] == 1
    assert s['tenure_rate_limit_trips_total{route="/v1/enroll"}'] == 1
    assert s[f'tenure_build_info{{version="{__version__}"}}'] == 1
    # Group commit and store latency: every write transaction is in the batch histogram.
    assert s['tenure_store_batch_jobs_bucket{le="+Inf"}'] == s["tenure_store_batch_jobs_count"] >= 5
    assert s["tenure_store_commit_duration_seconds_count"] == s["tenure_store_commits_total"]
    assert s["tenure_store_read_duration_seconds_count"] >= 1
    route = 'method="POST",route="/v1/leases"'
    assert s[f"tenure_http_request_duration_seconds_count{{{route}}}"] == 2
    assert s[f'tenure_http_request_duration_seconds_bucket{{{route},le="+Inf"}}'] == 2
    # This process, as every Prometheus client reports it.
    assert s["process_resident_memory_bytes"] > 10_000_000
    assert s["process_open_fds"] >= 3 and s["process_cpu_seconds_total"] > 0
    assert time.time() - 3600 < s["process_start_time_seconds"] <= time.time()
    # Names, not ids' names: the pool's editable name is no label.
    assert "Default Pool" not in text


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is missing: bash scripts/test.sh installs it")
async def test_promtool_passes_a_real_scrape(strict: Broker) -> None:
    text = await busy_scrape(strict)
    assert PROMTOOL is not None
    checked = await asyncio.to_thread(
        subprocess.run, [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == "" and checked.stderr.strip() == "", checked.stdout + checked.stderr
