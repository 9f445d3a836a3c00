"""The one secret-file writer: private, atomic, never through a planted link, no litter."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from shared.secretfile import write_secret


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_the_file_is_0600_whatever_the_umask_and_the_old_mode(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    target.write_text("old")
    os.chmod(target, 0o644)
    old_umask = os.umask(0)
    try:
        write_secret(target, b"new")
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b"new"
    assert mode(target) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


def test_a_new_file_is_0600_under_a_lax_umask(tmp_path: Path) -> None:
    old_umask = os.umask(0o002)
    try:
        write_secret(tmp_path / "key.pem", b"k")
    finally:
        os.umask(old_umask)
    assert mode(tmp_path / "key.pem") == 0o600


def test_a_symlink_at_the_target_is_replaced_not_written_through(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("precious")
    target = tmp_path / "operator-token"
    target.symlink_to(elsewhere)
    write_secret(target, b"secret")
    assert elsewhere.read_text() == "precious"
    assert not target.is_symlink() and target.read_bytes() == b"secret"
    assert mode(target) == 0o600


def test_a_symlink_planted_at_the_temporary_name_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Someone who can write the directory guesses the temporary name and plants a link
    # there: the writer must refuse it (O_EXCL | O_NOFOLLOW), not write the secret through.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("precious")
    target = tmp_path / "code-key"
    monkeypatch.setattr("shared.secretfile.os.urandom", lambda n: b"\x9e" * n)
    planted = tmp_path / f".code-key.{os.getpid()}.9e9e9e9e.tmp"
    planted.symlink_to(elsewhere)
    with pytest.raises(FileExistsError):
        write_secret(target, b"secret")
    assert elsewhere.read_text() == "precious"
    assert not target.exists()
    assert planted.is_symlink()  # not ours to remove: the writer never opened it


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "f.json"
    target.write_text("old")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        write_secret(target, b"new")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


def test_a_failed_rename_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "a-directory"
    target.mkdir()
    (target / "inside").write_text("x")  # a non-empty directory cannot be renamed over
    with pytest.raises(OSError):
        write_secret(target, b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-directory"]


def test_readers_see_the_old_content_or_the_new_never_a_mix(tmp_path: Path) -> None:
    target = tmp_path / "leases.json"
    old, new = b"a" * 200_000, b"b" * 200_000
    write_secret(target, old)
    seen: set[bytes] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.add(target.read_bytes())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(30):
            write_secret(target, new if i % 2 == 0 else old)
    finally:
        stop.set()
        reader.join()
    assert seen <= {old, new}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["leases.json"]
