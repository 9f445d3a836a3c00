"""The CPU time a control group allows this process: how many cores' worth it may use.

A container started with ``--cpus=1.5`` on a 4-core host, or a systemd service with
``CPUQuota=150%``, sees all 4 cores in its affinity but may run for only 1.5 cores' worth
of every scheduling period (a CFS bandwidth quota); beyond that the kernel stops every
one of its threads until the next period. ``workers = "auto"`` counts this limit as well
as the affinity (``broker.workers.count``).

The limit is read as the kernel applies it: the least over the process's own control
group and every ancestor up to the root of the mounted hierarchy, on cgroup v2
(``cpu.max``) and on v1's ``cpu`` controller (``cpu.cfs_quota_us`` over
``cpu.cfs_period_us``), whichever the machine mounts (a hybrid machine may have both).
What cannot be read (no control groups, a file that is not there or says something
else) is no limit: this only ever lowers the count, never stops a start.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import NamedTuple

PROC = Path("/proc/self")


class Group(NamedTuple):
    """This process's group in one hierarchy that can limit CPU."""

    directory: Path  # the group's own directory
    mount: Path  # the hierarchy's mount point: the last directory a limit is read from
    version: str  # "2", or "1" for v1's ``cpu`` controller


def limit(proc: Path = PROC) -> float | None:
    """The least CPU limit, in cores, over this process's control groups; ``None`` if
    none is set. ``proc`` is ``/proc/self`` (another directory laid out the same way, in
    tests)."""
    try:
        groups = (proc / "cgroup").read_text()
        mounts = (proc / "mountinfo").read_text()
    except OSError:
        return None
    found = [cores for group in own_groups(groups, mounts) if (cores := _least(*group)) is not None]
    return min(found) if found else None


def own_groups(groups: str, mounts: str) -> list[Group]:
    """This process's group in each mounted hierarchy that can limit CPU, from the text
    of ``/proc/self/cgroup`` and ``/proc/self/mountinfo``."""
    mine: dict[str, PurePosixPath] = {}  # version → the group's path in that hierarchy
    for line in groups.splitlines():
        number, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if number == "0" and controllers == "":
            mine["2"] = PurePosixPath(path)
        elif "cpu" in controllers.split(","):
            mine["1"] = PurePosixPath(path)
    found = []
    for line in mounts.splitlines():
        fields, _, tail = line.partition(" - ")
        parts, details = fields.split(), tail.split()
        if len(parts) < 5 or len(details) < 3:
            continue
        root, point, kind, options = PurePosixPath(_unescape(parts[3])), parts[4], details[0], details[2]
        version = "2" if kind == "cgroup2" else "1" if kind == "cgroup" and "cpu" in options.split(",") else ""
        if version not in mine:
            continue
        # Inside a container the mount's root is the container's own group, and the
        # group's path is relative to it; a path outside that root (seen from another
        # namespace) leaves the mount point itself, the nearest group in sight.
        mount, own = Path(_unescape(point)), mine[version]
        found.append(Group(mount / own.relative_to(root) if own.is_relative_to(root) else mount, mount, version))
    return found


def _least(directory: Path, mount: Path, version: str) -> float | None:
    """The least limit from ``directory`` up to ``mount``, the root of its hierarchy."""
    least: float | None = None
    while True:
        cores = _read(directory, version)
        if cores is not None and (least is None or cores < least):
            least = cores
        if directory == mount or not directory.is_relative_to(mount):
            return least
        directory = directory.parent


def _read(directory: Path, version: str) -> float | None:
    """One group's own limit in cores, or ``None`` (no limit, or nothing readable)."""
    try:
        if version == "2":
            quota, _, period = (directory / "cpu.max").read_text().partition(" ")
        else:
            quota = (directory / "cpu.cfs_quota_us").read_text()
            period = (directory / "cpu.cfs_period_us").read_text()
        if quota.strip() == "max" or int(quota) < 0 or int(period) <= 0:
            return None
        return int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _unescape(field: str) -> str:
    """A mountinfo path: space, tab, newline and backslash are written as octal escapes."""
    for escaped, plain in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(escaped, plain)
    return field
