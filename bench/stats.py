"""Latency summaries and the result record every run prints."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


def pct(sorted_ms: list[float], p: float) -> float:
    if not sorted_ms:
        return float("nan")
    i = min(len(sorted_ms) - 1, max(0, round(p / 100 * len(sorted_ms) + 0.5) - 1))
    return sorted_ms[i]


@dataclass
class Result:
    name: str
    concurrency: int
    ok: int
    seconds: float
    errors: dict[str, int] = field(default_factory=dict)
    p50: float = float("nan")
    p95: float = float("nan")
    p99: float = float("nan")
    broker_cpu: float = float("nan")  # percent of one core, over the measured window
    broker_peak_mb: float = float("nan")
    machine_busy: float = float("nan")  # percent of all cores busy (broker, clients, others)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_us(self) -> float:
        """Broker CPU per answered request, in µs: what the broker spent on each, which
        other work on the machine skews far less than throughput."""
        return self.broker_cpu / 100 * 1e6 / self.rate if self.rate > 0 else float("nan")

    @classmethod
    def of(
        cls,
        name: str,
        concurrency: int,
        latencies_ms: list[float],
        seconds: float,
        errors: dict[str, int] | None = None,
    ) -> Result:
        lat = sorted(latencies_ms)
        return cls(name, concurrency, len(lat), seconds, dict(errors or {}), pct(lat, 50), pct(lat, 95), pct(lat, 99))

    def line(self, ceiling: float | None = None) -> str:
        ratio = f"{self.rate / ceiling:5.2f}x" if ceiling else "   -  "
        errs = sum(self.errors.values())
        err_text = f"{errs}" + (f" {dict(self.errors)}" if errs else "")
        return (
            f"{self.name:<22} c={self.concurrency:<4} {self.rate:8.0f}/s {ratio}  "
            f"p50 {self.p50:6.2f}  p95 {self.p95:6.2f}  p99 {self.p99:6.2f} ms  "
            f"cpu {self.broker_cpu:4.0f}% {self.cpu_us:4.0f}us/req  box {self.machine_busy:3.0f}%  "
            f"peak {self.broker_peak_mb:5.0f} MB  err {err_text}"
        )

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rate"] = self.rate
        d["cpu_us"] = self.cpu_us
        return d
