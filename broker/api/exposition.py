"""The Prometheus text format (version 0.0.4), written so that ``promtool check metrics``
passes: every family has HELP and TYPE, names are in base units (seconds, bytes), counters
end in ``_total``, and label values are escaped. Also the ``process_*`` family every
Prometheus client exports, read from ``/proc/self`` (no client library).
"""

from __future__ import annotations

import math
import os
import resource
import time
from collections.abc import Iterable, Mapping

from broker.store.base import Histogram

Labels = Mapping[str, str | int]
_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
_IMPORTED = time.time()


def _escape(value: str | int) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def _sample(name: str, labels: Labels, value: float) -> str:
    if not labels:
        return f"{name} {_number(value)}"
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return f"{name}{{{inner}}} {_number(value)}"


class Exposition:
    """One scrape's text, family by family (a family is written whole, once)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def _head(self, name: str, kind: str, help_: str) -> None:
        self.lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]

    def single(self, name: str, kind: str, help_: str, value: float) -> None:
        self.family(name, kind, help_, [({}, value)])

    def family(self, name: str, kind: str, help_: str, samples: Iterable[tuple[Labels, float]]) -> None:
        self._head(name, kind, help_)
        self.lines += [_sample(name, labels, value) for labels, value in samples]

    def histograms(self, name: str, help_: str, series: Iterable[tuple[Labels, Histogram]]) -> None:
        self._head(name, "histogram", help_)
        for labels, hist in series:
            running = 0
            for bound, n in zip((*hist.bounds, math.inf), hist.counts, strict=True):
                running += n
                self.lines.append(_sample(f"{name}_bucket", {**labels, "le": _number(bound)}, running))
            self.lines.append(_sample(f"{name}_sum", labels, round(hist.total, 6)))
            self.lines.append(_sample(f"{name}_count", labels, running))

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


_PROCESS = (
    ("process_cpu_seconds_total", "counter", "User and system CPU time spent in seconds."),
    ("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes."),
    ("process_resident_memory_bytes", "gauge", "Resident memory size in bytes."),
    ("process_open_fds", "gauge", "Number of open file descriptors."),
    ("process_max_fds", "gauge", "Maximum number of open file descriptors."),
    ("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds."),
)


def process_figures() -> dict[str, float]:
    """``process_*`` as the Prometheus client libraries name them, for this process."""
    times = os.times()
    figures = {"process_cpu_seconds_total": times.user + times.system}
    try:
        with open("/proc/self/statm") as f:
            size, resident = (int(x) for x in f.read().split()[:2])
        figures["process_virtual_memory_bytes"] = size * _PAGE
        figures["process_resident_memory_bytes"] = resident * _PAGE
        figures["process_open_fds"] = len(os.listdir("/proc/self/fd"))
    except OSError:
        pass  # not Linux: the rest still holds
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY:
        figures["process_max_fds"] = soft
    figures["process_start_time_seconds"] = _start_time()
    return figures


def process_metrics(out: Exposition, processes: Iterable[tuple[Labels, Mapping[str, float]]]) -> None:
    """``process_*`` of each of ``processes`` (figures from ``process_figures``)."""
    processes = list(processes)
    for name, kind, help_ in _PROCESS:
        samples = [(labels, figures[name]) for labels, figures in processes if name in figures]
        if samples:
            out.family(name, kind, help_, samples)


def _start_time() -> float:
    """From ``/proc/self/stat`` (clock ticks after boot) and the boot time; else this
    module's import time, which is within a second of it for the broker."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + int(fields[19]) / _TICKS  # field 22 of stat; the text after ")" starts at field 3
    except (OSError, StopIteration, IndexError, ValueError):
        return _IMPORTED
