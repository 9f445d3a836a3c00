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
import time
import urllib.request
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
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime, all threads
        rss = peak = 0.0
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) / 1024
                elif line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) / 1024
        return Usage(cpu, rss, peak)

    def reset_peak(self) -> None:
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
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


def _started(proc: subprocess.Popen[bytes], port: int) -> Proc:
    """The process once it answers /healthz; stopped again if it never does."""
    p = Proc(proc, f"http://127.0.0.1:{port}")
    try:
        _wait_http(p.url + "/healthz", proc)
    except BaseException:
        p.stop()
        raise
    return p


def start_broker(
    data_dir: Path, *, synchronous: str = "full", port: int | None = None, log: Path | None = None
) -> Proc:
    port = port or free_port()
    # Every bench client enrols from 127.0.0.1, and a redemption in flight counts against
    # the per-address failure budget (10 by default) until it succeeds: enrolling with 64
    # workers would be refused 429. The budget guards against guessing, not load; it is
    # raised here so that setting up thousands of servers is not what is measured.
    env = {
        **os.environ,
        "TENURE_OPERATOR_TOKEN": OPERATOR_TOKEN,
        "TENURE_SQLITE_SYNCHRONOUS": synchronous,
        "TENURE_LOG_LEVEL": "warning",
        "TENURE_REDEEM_FAILURES_PER_ADDRESS": "100000",
    }
    exe = shutil.which("tenure-broker", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "broker.cli"]
    out = open(log or os.devnull, "ab")
    proc = subprocess.Popen(
        [*cmd, "serve", "--data-dir", str(data_dir), "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=out,
        stderr=out,
        cwd=ROOT,
    )
    out.close()
    return _started(proc, port)


def start_echo() -> Proc:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.echo", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return _started(proc, port)
