"""``python -m bench.profiled OUT [tenure-broker arguments]``: the broker under cProfile.

Every thread is profiled (the event loop, the store's worker threads, the pool's), each
with its own ``cProfile.Profile`` on ``time.thread_time``, so the figures are CPU time,
not time spent waiting on PostgreSQL or a lock. At exit (SIGTERM, as ``bench.procs``
stops a broker) the profiles are merged into ``OUT`` (``pstats`` format). cProfile's own
cost (a clock read per call and return) inflates call-heavy code: read the shares and
call counts, not the absolute times.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import threading
import time
from types import FrameType
from typing import Any

_profiles: list[cProfile.Profile] = []
_lock = threading.Lock()


def _in_new_thread(frame: FrameType, event: str, arg: Any) -> None:
    """The first profiling event of a new thread: give the thread its own profiler
    (``enable`` replaces this hook for the thread)."""
    profile = cProfile.Profile(time.thread_time)
    with _lock:
        _profiles.append(profile)
    profile.enable()


def main() -> int:
    out, argv = sys.argv[1], sys.argv[2:]
    from broker import cli

    threading.setprofile(_in_new_thread)
    main_profile = cProfile.Profile(time.thread_time)
    main_profile.enable()
    try:
        code = cli.main(argv)
    finally:
        main_profile.disable()
        threading.setprofile(None)  # type: ignore[arg-type]
        stats = pstats.Stats(main_profile)
        with _lock:
            for profile in _profiles:
                stats.add(profile)
        stats.dump_stats(out)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
