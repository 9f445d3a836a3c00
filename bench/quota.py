"""A CPU quota for a benchmark: ``--cpu-quota CORES`` holds the run, its broker and its
clients, to CORES cores' worth of CPU time, as a container's ``--cpus`` or a systemd
unit's ``CPUQuota=`` holds a broker (docs/performance.md, "A CPU limit").

``group(cores)`` makes a child of this process's own control group with that quota
(cgroup v2 ``cpu.max``, or v1's ``cpu.cfs_quota_us`` over ``cpu.cfs_period_us``, whichever
the machine lets it write: root on this project's machines) and removes it afterwards;
``hold(cores)`` moves this process into such a group for the rest of its life, so that
everything it starts is held too.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

from broker import cpulimit

PERIOD_US = 100_000  # the period docker's --cpus and systemd's CPUQuota= use by default


class NoGroup(RuntimeError):
    """No control group with a CPU controller that this process may write."""


@contextlib.contextmanager
def group(cores: float) -> Iterator[Path]:
    """A new control group held to ``cores``: its directory (a process joins it by writing
    its pid to ``cgroup.procs``). Removed on the way out, once its processes have gone."""
    mine = cpulimit.own_groups(Path("/proc/self/cgroup").read_text(), Path("/proc/self/mountinfo").read_text())
    quota = str(max(1_000, round(cores * PERIOD_US)))  # the kernel's least quota is 1 ms
    for own in mine:
        made = own.directory / f"tenure-bench-{os.getpid()}-{time.monotonic_ns()}"
        try:
            made.mkdir()
        except OSError:
            continue
        try:
            if own.version == "2":
                (made / "cpu.max").write_text(f"{quota} {PERIOD_US}")
            else:
                (made / "cpu.cfs_period_us").write_text(str(PERIOD_US))
                (made / "cpu.cfs_quota_us").write_text(quota)
        except OSError:
            made.rmdir()
            continue
        try:
            yield made
        finally:
            _remove(made)
        return
    raise NoGroup(f"no writable cpu control group among {[str(own.directory) for own in mine]}")


def hold(cores: float) -> None:
    """This process and all it starts from now on, held to ``cores`` until it exits."""
    held = contextlib.ExitStack()
    made = held.enter_context(group(cores))
    (made / "cgroup.procs").write_text(str(os.getpid()))
    # At exit: back to the group it came from, then the group made here goes.
    held.callback((made.parent / "cgroup.procs").write_text, str(os.getpid()))
    atexit.register(held.close)
    print(f"held to {cores:g} {'core' if cores == 1 else 'cores'}' worth of CPU time ({made})", flush=True)


def _remove(made: Path) -> None:
    """A group can be removed once its last process has left it (exited or moved)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            made.rmdir()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
