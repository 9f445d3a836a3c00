"""Writing a secret file so that no one else can read it and no crash can tear it.

The broker's keys, code key and operator token and the agent's bindings and leases all
go through ``write_secret``: a temporary file beside the target, created exclusively
(``O_EXCL``: never an existing file, ``O_NOFOLLOW``: never through a planted symlink)
with mode 0600, written and fsynced, renamed over the target, and the directory fsynced
so that the rename itself survives a power cut. A reader sees the old file or the new
one, never a torn one; a failed write leaves the old file and no temporary one.

Run as root (``enroll`` by a technician, ``keys rotate`` by an operator) into a directory
that a service user owns, a file must still belong to that user: ``folder_owner`` says
whom to give it to, and ``write_secret`` hands it over before the rename, so that the
service never meets a file it cannot read, not even for a moment.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

SECRET_MODE = 0o600


def folder_owner(folder: Path) -> tuple[int, int] | None:
    """(uid, gid) of ``folder`` when this process runs as root and is not its owner, else
    None: then files written into it are this process's own, as they should be."""
    if os.geteuid() != 0:
        return None
    info = os.stat(folder)
    if (info.st_uid, info.st_gid) == (os.geteuid(), os.getegid()):
        return None
    return info.st_uid, info.st_gid


def write_secret(path: Path, data: bytes, mode: int = SECRET_MODE, *, owner: tuple[int, int] | None = None) -> None:
    """Replace ``path`` with ``data`` atomically, with exactly ``mode``; raise ``OSError``.

    ``owner`` (uid, gid), when given, owns the file from before it takes ``path``'s name.
    ``rename`` replaces a symlink at ``path`` itself rather than writing through it.
    """
    # os.urandom, which is what secrets.token_hex reads: the agent's service need not keep
    # secrets and hmac resident for a file name (docs/agent.md, "Footprint").
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        try:
            if owner is not None:
                os.fchown(fd, *owner)
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
