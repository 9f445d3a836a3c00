"""Signing keys and the data directory's owner: ``keys rotate`` run as root, and a key the
broker cannot read. Real ``tenure-broker`` processes; the broker's user is ``nobody``."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.broker.test_cli import COMMAND, clean_env, free_port

NOBODY = 65534
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs commands as root and as nobody")


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A data directory owned by the broker's user, somewhere that user can reach."""
    top = Path(tempfile.mkdtemp(prefix="tenure-keys-", dir="/tmp"))
    top.chmod(0o755)
    data = top / "data"
    data.mkdir(mode=0o700)
    os.chown(data, NOBODY, NOBODY)
    yield data
    shutil.rmtree(top, ignore_errors=True)


def rotate(data: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, "keys", "rotate", "--data-dir", str(data)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_keys_rotate_as_root_gives_the_files_it_makes_to_the_data_directorys_owner(data_dir: Path) -> None:
    for _ in range(2):  # the database and the secret key made by the first, then a write
        done = rotate(data_dir)
        assert done.returncode == 0, done.stderr
    written = sorted(data_dir.iterdir())
    assert {p.name for p in written} >= {"tenure.db", "secret-key"}
    assert {(p.stat().st_uid, p.stat().st_gid) for p in written} == {(NOBODY, NOBODY)}


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_a_key_the_broker_cannot_read_is_named_at_start(tmp_path: Path) -> None:
    # The broker runs as root without the capabilities that let root read anyone's
    # files: a key file of another user's, mode 0600, is then unreadable to it, as
    # root's key is to the broker's user after `keys rotate` as root used to leave it.
    data = tmp_path / "data"
    keys = data / "keys"
    keys.mkdir(parents=True, mode=0o700)
    key = keys / "key-1700000000-abcdefabcdef.pem"
    key.write_bytes(b"another user's key, mode 0600\n")
    key.chmod(0o600)
    os.chown(key, NOBODY, NOBODY)
    as_plain_user = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps=-all", "--"]
    started = subprocess.run(
        [*as_plain_user, *COMMAND, "serve", "--data-dir", str(data), "--port", str(free_port())],
        env=clean_env(TENURE_OPERATOR_TOKEN="tnr_op_" + "0" * 40),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 1, started.stderr
    assert "cannot listen" not in started.stderr
    assert started.stderr.strip().splitlines()[-1] == (
        f"tenure-broker: cannot read signing key {key}: Permission denied; it belongs to uid {NOBODY} "
        f"and the broker runs as uid 0 (give it to the broker's user: chown 0 {key})"
    )
