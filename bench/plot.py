"""Plots of a results file: ``python -m bench.plot bench/results.json docs/``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def write(data: dict[str, Any], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    secs = data["sections"]
    out: list[Path] = []
    series = [
        ("echo", "aiohttp echo (ceiling)", "k--"),
        ("acquire-full", "acquire (FULL)", "C0-o"),
        ("renew-full", "renew (FULL)", "C1-o"),
        ("release-full", "release (FULL)", "C2-o"),
    ]
    if any(s in secs for s, _, _ in series):
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
        for key, label, style in series:
            rows = sorted(secs.get(key, []), key=lambda r: r["concurrency"])
            if not rows:
                continue
            xs = [r["concurrency"] for r in rows]
            a1.plot(xs, [r["rate"] for r in rows], style, label=label)
            if key != "echo":
                a2.plot(xs, [r["p99"] for r in rows], style, label=label)
        for ax, title, unit in (
            (a1, "Throughput vs concurrent clients", "requests/s"),
            (a2, "p99 latency vs concurrent clients", "ms"),
        ):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrent clients")
            ax.set_ylabel(unit)
            ax.set_title(title)
            ax.grid(True, alpha=0.3)
            ax.legend()
        a2.axhline(25, color="red", lw=0.8, ls=":", label="target p99 25 ms")
        fig.tight_layout()
        path = folder / "bench-concurrency.svg"
        fig.savefig(path)
        plt.close(fig)
        out.append(path)
    points = []
    for key in ("fleet", "scale"):
        for r in secs.get(key, []):
            if r["name"].endswith(" renew"):
                points.append(r)
    if points:
        points.sort(key=lambda r: r["concurrency"])
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
        xs = [r["concurrency"] for r in points]
        a1.plot(xs, [r["rate"] for r in points], "C1-o", label="renewals/s (on schedule)")
        a1.set_ylabel("renewals/s")
        a1b = a1.twinx()
        a1b.plot(xs, [r["broker_peak_mb"] for r in points], "C3--s", label="broker peak RSS (MB)")
        a1b.set_ylabel("MB")
        a1.set_title("Renewal load and broker memory vs live leases")
        a2.plot(xs, [r["p99"] for r in points], "C1-o", label="renew p99")
        a2.plot(xs, [r["p50"] for r in points], "C1:o", label="renew p50")
        a2.axhline(50, color="red", lw=0.8, ls=":", label="target p99 50 ms")
        a2.set_ylabel("ms")
        a2.set_title("Renew latency vs live leases")
        for ax in (a1, a2):
            ax.set_xscale("log")
            ax.set_xlabel("live leases")
            ax.grid(True, alpha=0.3)
        a1.legend(loc="upper left")
        a1b.legend(loc="lower right")
        a2.legend()
        fig.tight_layout()
        path = folder / "bench-leases.svg"
        fig.savefig(path)
        plt.close(fig)
        out.append(path)
    return out


if __name__ == "__main__":
    for p in write(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])):
        print(p)
