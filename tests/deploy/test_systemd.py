"""deploy/systemd/*.service as systemd 252 (Debian 12) reads them: `systemd-analyze verify`
in a root holding the unit and the command it starts, and `systemd-analyze security`
scoring no worse than recorded here."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.conftest import DEPLOY, ROOT, need

UNITS = DEPLOY / "systemd"

# Exposure (0 = locked down, 10 = none) from `systemd-analyze security --offline=yes`.
# Lower these when a unit gets tighter; never raise them. Before issue 15's hardening
# they were 1.7 (agent) and 1.8 (broker).
MOST_EXPOSED = {"tenure-agent.service": 1.4, "tenure-broker.service": 1.2}


def settings(unit: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def fake_root(tmp_path: Path, unit: Path) -> Path:
    """A root with systemd's own units, ``unit``, and an executable at its ExecStart path."""
    root = tmp_path / "root"
    shutil.copytree(Path("/lib/systemd/system"), root / "lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(unit, root / "etc/systemd/system" / unit.name)
    for command in settings(unit)["ExecStart"]:
        program = root / command.split()[0].lstrip("/")
        program.parent.mkdir(parents=True, exist_ok=True)
        program.write_text("#!/bin/sh\n")
        program.chmod(0o755)
    return root


@pytest.mark.parametrize("name", sorted(MOST_EXPOSED))
def test_systemd_analyze_verify(name: str, tmp_path: Path) -> None:
    tool = need("systemd-analyze")
    if not Path("/lib/systemd/system/sysinit.target").exists():
        pytest.fail("systemd's units are not installed (apt-get install systemd)")
    root = fake_root(tmp_path, UNITS / name)
    result = subprocess.run([tool, "verify", f"--root={root}", name], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


@pytest.mark.parametrize("name", sorted(MOST_EXPOSED))
def test_systemd_analyze_security_scores_no_worse(name: str) -> None:
    tool = need("systemd-analyze")
    result = subprocess.run(
        [tool, "security", "--offline=yes", "--no-pager", str(UNITS / name)], capture_output=True, text=True, timeout=60
    )
    score = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert score, result.stdout + result.stderr
    assert float(score.group(1)) <= MOST_EXPOSED[name], result.stdout


@pytest.mark.parametrize("name", sorted(MOST_EXPOSED))
def test_sandbox_settings_the_review_asked_for(name: str) -> None:
    unit = settings(UNITS / name)
    assert unit["ProtectProc"] == ["invisible"]
    assert "~@privileged @resources" in unit["SystemCallFilter"]
    assert unit["Type"] == ["notify"]  # both programs send READY=1 (shared/sdnotify.py)
    assert unit["ExecStart"][0].startswith(f"/usr/bin/{name.removesuffix('.service')} ")  # the package's command
    if name == "tenure-broker.service":
        assert unit["ProcSubset"] == ["pid"]
    else:
        # The agent reads /proc/sys/kernel/random/boot_id, which ProcSubset=pid hides.
        assert "ProcSubset" not in unit
        assert "boot_id" in (ROOT / "agent" / "clock.py").read_text()


@pytest.mark.parametrize("name", sorted(MOST_EXPOSED))
def test_documentation_points_at_docs_the_package_installs(name: str) -> None:
    package = name.removesuffix(".service")
    links = [link for value in settings(UNITS / name)["Documentation"] for link in value.split()]
    assert links
    for link in links:
        prefix = f"file:///usr/share/doc/{package}/"
        assert link.startswith(prefix), link
        assert (ROOT / "docs" / link.removeprefix(prefix)).is_file(), link
