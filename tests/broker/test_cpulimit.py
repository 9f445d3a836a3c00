"""``workers = "auto"`` and a control group's CPU limit (``broker.cpulimit``).

- the limit is read from cgroup v2 and v1 as the kernel applies it: the least over the
  process's group and its ancestors, a container's view of its own group included;
  nothing readable is no limit;
- in a real control group with a CPU quota, ``auto`` rounds the quota to whole cores, and
  ``tenure-broker serve`` held to 1 core runs as one process and says why.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import quota
from broker import cpulimit
from broker.ids import new_token
from tests.broker.fleet import call, command, environment, free_port

V2_MOUNT = "30 23 0:26 / {point} rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
V1_CPU_MOUNT = "32 31 0:29 {root} {point} rw,relatime - cgroup cgroup rw,cpu,cpuacct\n"
V1_MEMORY_MOUNT = "35 31 0:32 / {point} rw,relatime - cgroup cgroup rw,memory\n"


def proc_dir(tmp_path: Path, cgroup: str, mountinfo: str) -> Path:
    """A ``/proc/self`` with the two files ``limit`` reads."""
    proc = tmp_path / "proc"
    proc.mkdir(parents=True)
    (proc / "cgroup").write_text(cgroup)
    (proc / "mountinfo").write_text(mountinfo)
    return proc


def group(root: Path, path: str, **files: str) -> None:
    """A group's directory under a hierarchy mounted at ``root``, with its files."""
    directory = root / path.strip("/")
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name.replace("_", ".", 1)).write_text(text)


def test_v2_takes_the_least_limit_of_the_group_and_its_ancestors(tmp_path: Path) -> None:
    mount = tmp_path / "sys fs"  # a space, written \040 in mountinfo
    group(mount, "/", cpu_max="max 100000\n")  # the root never has one; a file saying none is none
    group(mount, "/system.slice", cpu_max="250000 100000\n")
    group(mount, "/system.slice/tenure.service", cpu_max="max 100000\n")
    proc = proc_dir(
        tmp_path, "0::/system.slice/tenure.service\n", V2_MOUNT.format(point=str(mount).replace(" ", "\\040"))
    )
    assert cpulimit.limit(proc) == 2.5
    group(mount, "/system.slice/tenure.service", cpu_max="150000 100000\n")
    assert cpulimit.limit(proc) == 1.5
    # A limit above the hierarchy's mount point is not this process's to read.
    group(tmp_path, "/", cpu_max="50000 100000\n")
    assert cpulimit.limit(proc) == 1.5


def test_v1_cpu_controller_on_a_hybrid_machine(tmp_path: Path) -> None:
    cpu, unified, memory = tmp_path / "cpu", tmp_path / "unified", tmp_path / "memory"
    group(cpu, "/", cpu_cfs_quota_us="-1\n", cpu_cfs_period_us="100000\n")
    group(cpu, "/batch", cpu_cfs_quota_us="80000\n", cpu_cfs_period_us="100000\n")
    group(cpu, "/batch/broker", cpu_cfs_quota_us="-1\n", cpu_cfs_period_us="100000\n")
    group(unified, "/batch/broker")  # v2 mounted, without the cpu controller: no cpu.max
    group(memory, "/batch/broker", cpu_cfs_quota_us="10\n", cpu_cfs_period_us="100\n")  # not a cpu hierarchy
    proc = proc_dir(
        tmp_path,
        "5:memory:/batch/broker\n2:cpu,cpuacct:/batch/broker\n0::/batch/broker\n",
        V1_MEMORY_MOUNT.format(point=memory)
        + V1_CPU_MOUNT.format(root="/", point=cpu)
        + V2_MOUNT.format(point=unified),
    )
    assert cpulimit.limit(proc) == 0.8


def test_both_hierarchies_the_lesser_limit(tmp_path: Path) -> None:
    cpu, unified = tmp_path / "cpu", tmp_path / "unified"
    group(cpu, "/b", cpu_cfs_quota_us="300000\n", cpu_cfs_period_us="100000\n")
    group(unified, "/b", cpu_max="200000 100000\n")
    proc = proc_dir(
        tmp_path, "2:cpu:/b\n0::/b\n", V1_CPU_MOUNT.format(root="/", point=cpu) + V2_MOUNT.format(point=unified)
    )
    assert cpulimit.limit(proc) == 2.0


def test_inside_a_container_the_mount_root_is_the_containers_own_group(tmp_path: Path) -> None:
    # Docker on cgroup v1 without a cgroup namespace: /proc/self/cgroup names the group
    # from the host's root, the mount shows that group at the mount point.
    cpu = tmp_path / "cpu"
    group(cpu, "/", cpu_cfs_quota_us="150000\n", cpu_cfs_period_us="100000\n")
    proc = proc_dir(tmp_path, "4:cpu,cpuacct:/docker/ab12\n", V1_CPU_MOUNT.format(root="/docker/ab12", point=cpu))
    assert cpulimit.limit(proc) == 1.5
    # A group outside the mount's root (seen from another namespace): the mount point.
    proc2 = proc_dir(tmp_path / "other", "4:cpu:/elsewhere\n", V1_CPU_MOUNT.format(root="/docker/ab12", point=cpu))
    assert cpulimit.limit(proc2) == 1.5


@pytest.mark.parametrize(
    ("cgroup", "files"),
    [
        ("0::/\n", {"cpu_max": "max 100000\n"}),  # no limit
        ("0::/\n", {}),  # no cpu controller: no file
        ("0::/\n", {"cpu_max": "lots 100000\n"}),  # not a number
        ("0::/\n", {"cpu_max": "50000 0\n"}),  # no period
        ("0::/\n", {"cpu_max": ""}),
        ("", {"cpu_max": "50000 100000\n"}),  # in no v2 group
    ],
)
def test_nothing_readable_is_no_limit(tmp_path: Path, cgroup: str, files: dict[str, str]) -> None:
    mount = tmp_path / "cgroup"
    group(mount, "/", **files)
    assert cpulimit.limit(proc_dir(tmp_path, cgroup, V2_MOUNT.format(point=mount))) is None


def test_no_control_groups_at_all_is_no_limit(tmp_path: Path) -> None:
    assert cpulimit.limit(tmp_path / "nothing") is None
    assert cpulimit.limit(proc_dir(tmp_path, "garbage", "more garbage\n - \n")) is None


@contextlib.contextmanager
def cpu_quota(cores: float) -> Iterator[Path]:
    """A real control group held to ``cores``: its ``cgroup.procs``. Needs a writable cpu
    hierarchy (root on this project's machines); without one the test cannot run, which
    fails it in CI."""
    try:
        with quota.group(cores) as made:
            yield made / "cgroup.procs"
    except quota.NoGroup as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def count_in(procs: Path) -> int:
    """``workers.count`` for the default settings, in a fresh process in the group."""
    script = f"""
import os
from pathlib import Path
Path({str(procs)!r}).write_text(str(os.getpid()))
from broker import workers
from broker.config import Config
print(workers.count(Config()))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENURE_")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def test_auto_rounds_a_real_quota_to_whole_cores() -> None:
    cores = min(4, len(os.sched_getaffinity(0)))
    with cpu_quota(0.5) as procs:
        assert count_in(procs) == 1
    with cpu_quota(1.4) as procs:
        assert count_in(procs) == 1
    with cpu_quota(cores + 0.5) as procs:  # more than the cores there are: the cores
        assert count_in(procs) == cores
    if cores >= 2:
        with cpu_quota(1.5) as procs:
            assert count_in(procs) == 2


@pytest.mark.slow
def test_serve_held_to_one_core_runs_one_process_and_says_why(tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "broker.log"
    with cpu_quota(1.0) as procs, log_path.open("ab") as log:
        broker = subprocess.Popen(
            [*command(), "serve", "--data-dir", str(tmp_path / "data"), "--port", str(port)],
            env=environment("", new_token("op")),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # In the group before it runs a line of the broker (this test starts no threads).
            preexec_fn=lambda: procs.write_text(str(os.getpid())),
        )
        try:
            deadline = time.monotonic() + 30
            while not re.search(r"listening on \S+ \(", log_path.read_text()):
                assert broker.poll() is None and time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.05)
            assert call(f"http://127.0.0.1:{port}/healthz")[0] == 200
            # One process: the broker has no worker or writer children.
            children = Path(f"/proc/{broker.pid}/task/{broker.pid}/children").read_text()
            assert children.split() == [], children
        finally:
            broker.terminate()
            assert broker.wait(15) == 0, log_path.read_text()
    text = log_path.read_text()
    if len(os.sched_getaffinity(0)) > 1:  # on one core, one process anyway, and no word of the limit
        assert "workers = auto: 1, for a CPU limit of 1.00 cores" in text, text
    assert "workers listening" not in text, text
