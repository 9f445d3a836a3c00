"""The README's walkthrough runs as written, and leaves no secret in the directory it runs in."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.broker.test_cli import COMMAND, Served, clean_env, free_port

ROOT = Path(__file__).resolve().parents[1]


def walkthrough() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Walkthrough", 1)[1]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match is not None, "the README has no walkthrough script"
    return match.group(1)


@pytest.mark.slow
def test_the_walkthrough_runs_verbatim_and_keeps_its_secrets_private(tmp_path: Path) -> None:
    # A fresh "repository root": the walkthrough uses .venv/bin/python and ./tenure-data.
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parents[1])
    port = free_port()
    log = tmp_path / "broker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*COMMAND, "serve", "--port", str(port)], cwd=tmp_path, env=clean_env(), stdout=out, stderr=out
        )
    served = Served(proc, port, log)
    try:
        served.wait_healthy()
        # The one change: the port, so that a broker a developer runs on 8400 is left alone.
        script = walkthrough().replace("http://127.0.0.1:8400", served.url)
        before = set(tmp_path.iterdir())
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=tmp_path,
            env=clean_env(PYTHONPATH=str(ROOT)),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr + result.stdout
        assert re.search(r"^code: \d{8}$", result.stdout, re.M)
        assert re.search(r"^verified: ENC-0001 holds 3 one-in-one-out until \d+$", result.stdout, re.M)
        assert re.search(r'"action": "lease.granted"', result.stdout)
        assert re.search(
            r"^checked 1 estate, 2 purchases, 1 active lease and \d+ events: all invariants hold$", result.stderr, re.M
        ), result.stderr
        # Nothing new beside the data directory, which is private (0700).
        assert set(tmp_path.iterdir()) == before
        assert (tmp_path / "tenure-data").stat().st_mode & 0o077 == 0
        assert (tmp_path / "tenure-data" / "walkthrough" / "estate.json").exists()
    finally:
        assert served.stop() == 0
