"""Writing a secret file so that no one else can read it and no crash can tear it.

The broker's keys, code key and operator token and the agent's bindings and leases all
go through ``write_secret``: a temporary file beside the target, created exclusively
(``O_EXCL``: never an existing file, ``O_NOFOLLOW``: never through a planted symlink)
with mode 0600, written and fsynced, renamed over the target, and the directory fsynced
so that the rename itself survives a power cut. A reader sees the old file or the new
one, never a torn one; a failed write leaves the old file and no temporary one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

SECRET_MODE = 0o600


def write_secret(path: Path, data: bytes, mode: int = SECRET_MODE) -> None:
    """Replace ``path`` with ``data`` atomically, with exactly ``mode``; raise ``OSError``.

    ``rename`` replaces a symlink at ``path`` itself rather than writing through it.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have taken bits away; be exact
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
