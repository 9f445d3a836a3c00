"""Subprocesses under test: the real broker (``tenure-broker serve``) and an echo server.

Also reads a process's CPU time and peak RSS from ``/proc`` (Linux only), and resets the
peak between phases (``clear_refs`` 5) so that each phase reports its own peak.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
OPERATOR_TOKEN = "tnr_op_" + "b" * 43  # benchmark only: a throwaway broker on 127.0.0.1
ROOT = Path(__file__).resolve().parent.parent


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from ``/proc/stat``."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    return (sum(ticks) - idle) / CLK_TCK, sum(ticks) / CLK_TCK


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status < 500:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


@dataclass
class Usage:
    cpu_seconds: float
    rss_mb: float
    peak_rss_mb: float


class Proc:
    """A child process we started; stopped with SIGTERM (then SIGKILL) by its own pid."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str) -> None:
        self.proc = proc
        self.url = url

    @property
    def pid(self) -> int:
        return self.proc.pid

    def usage(self) -> Usage:
        """The process and its children (a broker's workers and writer), summed: CPU; the
        resident size as PSS (a page the forked processes share counts once, split among
        them); and the sum of each one's peak VmHWM (an upper bound of the whole's peak)."""
        cpu = rss = peak = 0.0
        for pid in tree(self.pid):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{pid}/status") as f:
                    status = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
                with open(f"/proc/{pid}/smaps_rollup") as f:
                    rollup = dict(line.split(":", 1) for line in f.read().splitlines()[1:] if ":" in line)
            except OSError:
                continue  # gone meanwhile
            cpu += (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime, all threads
            rss += int(rollup.get("Pss", status["VmRSS"]).split()[0]) / 1024
            peak += int(status["VmHWM"].split()[0]) / 1024
        return Usage(cpu, rss, peak)

    def reset_peak(self) -> None:
        for pid in tree(self.pid):
            try:
                with open(f"/proc/{pid}/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass  # not permitted here: the peak is then since start

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a broker's workers and writer)."""
    found = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return found
    for child in children:
        found.extend(tree(int(child)))
    return found


def _started(proc: subprocess.Popen[bytes], port: int, timeout: float = 30.0) -> Proc:
    """The process once it answers /healthz; stopped again if it never does."""
    p = Proc(proc, f"http://127.0.0.1:{port}")
    try:
        _wait_http(p.url + "/healthz", proc, timeout)
    except BaseException:
        p.stop()
        raise
    return p


class Group:
    """Several broker replicas measured as one: CPU summed, peak RSS the largest; ``url``
    is the first's (set-up goes there), ``urls`` every one's (load is spread over them)."""

    def __init__(self, procs: Sequence[Proc]) -> None:
        self.procs = list(procs)
        self.url = self.procs[0].url
        self.urls = [p.url for p in self.procs]

    def usage(self) -> Usage:
        each = [p.usage() for p in self.procs]
        return Usage(sum(u.cpu_seconds for u in each), sum(u.rss_mb for u in each), max(u.peak_rss_mb for u in each))

    def reset_peak(self) -> None:
        for p in self.procs:
            p.reset_peak()

    def stop(self) -> None:
        for p in self.procs:
            p.stop()


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of these processes (all threads); a pid gone meanwhile counts 0."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / CLK_TCK


def start_broker(
    data_dir: Path,
    *,
    synchronous: str = "full",
    port: int | None = None,
    log: Path | None = None,
    env: Mapping[str, str] | None = None,
    wrap: Sequence[str] = (),
    ready_timeout: float = 30.0,
) -> Proc:
    """A real ``tenure-broker serve`` on ``data_dir``; ``env`` adds settings (e.g.
    ``TENURE_DATABASE_URL`` and ``TENURE_SECRET_KEY`` for a PostgreSQL replica); ``wrap``
    runs it through another command (``python -m bench.profiled OUT``), given its arguments;
    ``ready_timeout`` bounds its start: the seconds it has to answer /healthz, and (60 at
    the least) to send READY=1."""
    port = port or free_port()
    # Every bench client enrols from 127.0.0.1, and a redemption in flight counts against
    # the per-address failure budget (10 by default) until it succeeds: enrolling with 64
    # workers would be refused 429. The budget guards against guessing, not load; it is
    # raised here so that setting up thousands of servers is not what is measured.
    settings = {
        **os.environ,
        "TENURE_OPERATOR_TOKEN": OPERATOR_TOKEN,
        "TENURE_SQLITE_SYNCHRONOUS": synchronous,
        "TENURE_LOG_LEVEL": "warning",
        "TENURE_REDEEM_FAILURES_PER_ADDRESS": "100000",
        **(env or {}),
    }
    exe = shutil.which("tenure-broker", path=str(Path(sys.executable).parent))
    cmd = list(wrap) if wrap else [exe] if exe else [sys.executable, "-m", "broker.cli"]
    out = open(log or os.devnull, "ab")
    # READY=1 (sd_notify) comes once every worker answers; /healthz answers with the first.
    with tempfile.TemporaryDirectory(prefix="tenure-bench-notify-") as tmp:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.bind(f"{tmp}/notify")
            proc = subprocess.Popen(
                [*cmd, "serve", "--data-dir", str(data_dir), "--host", "127.0.0.1", "--port", str(port)],
                env={**settings, "NOTIFY_SOCKET": f"{tmp}/notify"},
                stdout=out,
                stderr=out,
                cwd=ROOT,
            )
            out.close()
            started = _started(proc, port, ready_timeout)
            _wait_ready(notify, started, max(60.0, ready_timeout))
    return started


def _wait_ready(notify: socket.socket, broker: Proc, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        notify.settimeout(0.2)
        try:
            if b"READY=1" in notify.recv(4096).split(b"\n"):
                return
        except TimeoutError:
            if broker.proc.poll() is not None:
                raise RuntimeError(f"the broker exited with {broker.proc.returncode} before READY=1") from None
    broker.stop()
    raise RuntimeError(f"the broker sent no READY=1 within {timeout} s")


def start_echo() -> Proc:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.echo", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return _started(proc, port)
