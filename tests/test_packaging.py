"""The built wheel carries every file the broker reads at run time (not only .py files)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_has_queries_migrations_and_console(tmp_path: Path) -> None:
    # Build from a clean copy: a stale *.egg-info in the work tree would leak files in.
    src = tmp_path / "src"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "*.egg-info", "build", "__pycache__", ".*_cache", "test-artifacts", "tenure-data"
        ),
    )
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    wheel = next(tmp_path.glob("tenure-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    needed = [
        p.relative_to(ROOT).as_posix()
        for pattern in (
            "broker/store/queries*/*.sql",
            "broker/store/migrations*/*.sql",
            "broker/console/static/**/*",
        )
        for p in ROOT.glob(pattern)
        if p.is_file() and "__pycache__" not in p.parts
    ]
    assert needed, "nothing to check"
    assert "broker/console/static/js/pages/pool.js" in needed  # the console's nested modules too
    assert not [n for n in needed if n not in names]
    # One version string: the wheel's metadata is the one shared/ holds.
    from shared import __version__

    assert wheel.name.startswith(f"tenure-{__version__}-")


@pytest.mark.parametrize("program", ["broker", "agent"])
def test_both_programs_report_the_one_version(program: str, capsys: pytest.CaptureFixture[str]) -> None:
    from importlib import import_module
    from importlib.metadata import version

    from shared import __version__

    with pytest.raises(SystemExit) as exited:
        import_module(f"{program}.cli").main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"tenure-{program} {__version__}\n"
    assert version("tenure") == __version__  # the installed metadata says the same
