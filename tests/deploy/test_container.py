"""deploy/container/Containerfile as hadolint reads it, and the image's health check run
against a real broker over HTTP and HTTPS."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

from tests.deploy.conftest import DEPLOY, ROOT, Broker, free_port, need, self_signed

CONTAINERFILE = DEPLOY / "container" / "Containerfile"
HEALTHCHECK = DEPLOY / "container" / "healthcheck.py"


def test_hadolint_finds_nothing() -> None:
    hadolint = need("hadolint")
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(CONTAINERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_the_image_is_pinned_runs_as_a_number_and_checks_itself_in_exec_form() -> None:
    text = CONTAINERFILE.read_text()
    assert re.search(r"^FROM \S+@sha256:[0-9a-f]{64}$", text, re.M)
    assert re.search(r"^USER \d+:\d+$", text, re.M)
    healthcheck = re.search(r"^HEALTHCHECK .*CMD (\[.*\])$", text, re.M)
    assert healthcheck and "healthcheck.py" in healthcheck.group(1)
    assert "-c deploy/constraints.txt" in text


def test_constraints_pin_every_runtime_dependency_within_its_range() -> None:
    pins = {}
    for line in (DEPLOY / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    for spec in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        req = Requirement(spec)
        assert req.name in pins, f"{req.name} is not pinned in deploy/constraints.txt"
        assert req.specifier.contains(pins[req.name]), f"{req.name}=={pins[req.name]} is outside {req.specifier}"


def health(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TENURE_")}
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK)], env={**base, **env}, capture_output=True, text=True, timeout=30
    )


def test_healthcheck_over_http(broker: Broker) -> None:
    assert health({"TENURE_HEALTHCHECK_PORT": str(broker.port)}).returncode == 0


def test_healthcheck_honours_tls(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    served = Broker(tmp_path / "data", "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        env = {"TENURE_HEALTHCHECK_PORT": str(served.port), "TENURE_TLS_CERT": str(cert)}
        assert health(env).returncode == 0
        plain = health({"TENURE_HEALTHCHECK_PORT": str(served.port)})  # HTTP to a TLS port: not healthy
        assert plain.returncode == 1
    finally:
        served.stop()


def test_healthcheck_fails_when_nothing_answers() -> None:
    result = health({"TENURE_HEALTHCHECK_PORT": str(free_port())})
    assert result.returncode == 1
    assert "healthcheck: http://127.0.0.1:" in result.stderr
