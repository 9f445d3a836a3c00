"""The Debian packages, built by deploy/package.sh, checked by lintian, and installed into a
clean Debian 12 root (debootstrap, then chroot): `--help`, an agent enrolled against the
packaged broker running on 127.0.0.1, then `apt-get remove` and `apt-get purge`, leaving
the root as it was. The same root booted under systemd (systemd-nspawn) runs both services
from their units, hardening and Type=notify included.

Slow (about two minutes; the first run also spends one or two on debootstrap, whose root
is then kept in ~/.cache/tenure): marked ``package``. By hand, as root on Debian 12:

    bash deploy/package.sh && .venv/bin/python -m pytest -m package tests/deploy -v
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker import workers
from broker.config import Config
from shared import __version__
from tests.deploy.conftest import ROOT, free_port, need

pytestmark = [pytest.mark.package, pytest.mark.slow, pytest.mark.timeout(1200)]

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# What the packages depend on, in the base root, so that installing them needs no network;
# and systemd, to boot the root as a container and run the services as a host would.
BASE_PACKAGES = "python3.11,adduser,systemd,systemd-sysv,dbus"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tenure"


def as_root_on_debian() -> None:
    reason = None
    if os.geteuid() != 0:
        reason = "installing into a chroot needs root"
    elif not Path("/etc/debian_version").exists():
        reason = "deploy/package.sh builds on Debian 12"
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the package tests cannot run here: {reason}")
        pytest.skip(f"the package tests cannot run here: {reason}")


@pytest.fixture(scope="module")
def debs() -> dict[str, Path]:
    as_root_on_debian()
    need("dpkg-deb")
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout.strip()
    # xz at level 1 rather than 6: the same contents in a fifth of the compression time.
    env = {**os.environ, "TENURE_PACKAGE_XZ_LEVEL": "1"}
    result = subprocess.run(
        ["bash", "deploy/package.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-4000:]
    built = {}
    for name in ("tenure-agent", "tenure-broker"):
        deb = ROOT / "dist" / f"{name}_{__version__}_{arch}.deb"
        assert f"dist/{deb.name}" in result.stdout.split()
        assert deb.is_file()
        built[name] = deb
    return built


def base_root() -> Path:
    """A tarball of a minimal Debian 12 root with the packages' dependencies, made once."""
    tarball = CACHE / f"{SUITE}-minbase-{BASE_PACKAGES.replace(',', '+')}.tar"
    if tarball.exists():
        return tarball
    debootstrap = need("debootstrap")
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(subprocess.run(["mktemp", "-d"], capture_output=True, text=True, check=True).stdout.strip())
    try:
        result = subprocess.run(
            [debootstrap, "--variant=minbase", f"--include={BASE_PACKAGES}", SUITE, str(work / "root"), MIRROR],
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        shutil.rmtree(work / "root" / "var/cache/apt/archives", ignore_errors=True)
        (work / "root" / "var/cache/apt/archives/partial").mkdir(parents=True)
        partial = tarball.with_suffix(".partial")
        subprocess.run(["tar", "-cf", str(partial), "--numeric-owner", "-C", str(work / "root"), "."], check=True)
        partial.rename(tarball)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return tarball


@pytest.fixture
def debian(tmp_path: Path) -> Path:
    """A fresh copy of the clean Debian 12 root."""
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(["tar", "-xf", str(base_root()), "--numeric-owner", "-C", str(root)], check=True)
    return root


ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}


def in_root(root: Path, *command: str, user: str | None = None, offline: bool = False) -> list[str]:
    """``command`` run in ``root``, with /proc, in a mount and PID namespace of its own (so
    that nothing stays mounted or running); ``offline``: with no network at all."""
    userspec = f"--userspec={user}:{user} " if user else ""
    inner = f'mount -t proc proc {root}/proc && exec chroot {userspec}{root} "$@"'
    unshare = ["unshare", "--mount", "--propagation", "private", "--fork", "--pid", "--kill-child"]
    return [*unshare, *(["--net"] if offline else []), "sh", "-c", inner, "sh", *command]


def chroot(
    root: Path, *command: str, user: str | None = None, offline: bool = False
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        in_root(root, *command, user=user, offline=offline), capture_output=True, text=True, timeout=300, env=ENV
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def files(root: Path) -> set[str]:
    """Every path in ``root`` but the logs and caches an install or removal writes."""
    volatile = ("var/log/", "var/cache/", "var/lib/dpkg/", "var/lib/apt/", "proc/", "tmp/", "run/", "etc/ld.so.cache")
    found = set()
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if not rel.startswith(volatile) and not rel.endswith("-"):  # adduser's passwd-/group- backups
            found.add(rel)
    return found


def call(url: str, token: str | None = None, body: dict[str, object] | None = None) -> dict[str, object]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data is not None else "GET")
    with urllib.request.urlopen(req, timeout=10) as answer:
        return json.loads(answer.read())  # type: ignore[no-any-return]


@pytest.fixture
def packaged_broker(debian: Path, debs: dict[str, Path]) -> Iterator[tuple[Path, str]]:
    """Both packages installed (offline) into the clean root; the packaged broker serving
    on 127.0.0.1 as its own user. Yields (root, broker URL)."""
    for deb in debs.values():
        shutil.copy(deb, debian / "tmp" / deb.name)
    ok(chroot(debian, "apt-get", "install", "-y", "-q", *(f"/tmp/{d.name}" for d in debs.values()), offline=True))
    port = free_port()
    log = debian.parent / "broker.log"
    serve = ["/usr/bin/tenure-broker", "serve", "--config", "/etc/tenure/broker.toml"]
    serve += ["--data-dir", "/var/lib/tenure-broker", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        # chroot execs the broker: this process is the broker's, and SIGTERM reaches it.
        chrooted = ["chroot", "--userspec=tenure-broker:tenure-broker", str(debian), *serve]
        proc = subprocess.Popen(chrooted, env=ENV, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if call(f"{url}/healthz") == {"status": "ok"}:
                    break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        yield debian, url
    finally:
        proc.terminate()
        try:
            assert proc.wait(timeout=20) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_lintian_finds_no_errors(debs: dict[str, Path]) -> None:
    lintian = need("lintian")
    for deb in debs.values():
        result = subprocess.run([lintian, "--fail-on", "error", str(deb)], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        assert not [line for line in result.stdout.splitlines() if line.startswith("E:")], result.stdout


def test_package_contents(debs: dict[str, Path]) -> None:
    for name, deb in debs.items():
        listing = subprocess.run(
            ["dpkg-deb", "--contents", str(deb)], capture_output=True, text=True, check=True
        ).stdout
        conffiles = subprocess.run(
            ["dpkg-deb", "--ctrl-tarfile", str(deb)], capture_output=True, check=True
        ).stdout  # a tar holding ./conffiles
        assert f"./usr/bin/{name} -> ../lib/{name}/bin/{name}" in listing
        assert f"./lib/systemd/system/{name}.service" in listing
        if name == "tenure-broker":
            assert f"./usr/share/doc/{name}/examples/tenure-alerts.yml" in listing
        assert "__pycache__" not in listing  # compiled at install, removed at removal
        assert b"/etc/" in conffiles
        unit = (ROOT / "deploy/systemd" / f"{name}.service").read_text()
        for line in unit.splitlines():
            if line.startswith("Documentation=file://"):
                assert "." + line.removeprefix("Documentation=file://") in listing, line


def test_install_enrol_remove_purge_in_a_clean_debian_12(packaged_broker: tuple[Path, str]) -> None:
    root, url = packaged_broker
    # Both commands answer from the packaged environment.
    for name in ("tenure-agent", "tenure-broker"):
        assert "usage:" in ok(chroot(root, name, "--help"))
        assert ok(chroot(root, name, "--version")) == f"{name} {__version__}\n"
    # The service users, state directories and conffiles the packages made.
    passwd = (root / "etc/passwd").read_text()
    assert "\ntenure-agent:" in passwd and "\ntenure-broker:" in passwd
    for name, conffile in (
        ("tenure-agent", "etc/tenure-agent/agent.toml"),
        ("tenure-broker", "etc/tenure/broker.toml"),
    ):
        state = root / "var/lib" / name
        assert state.stat().st_mode & 0o777 == 0o700
        assert (root / conffile).is_file()
        # Enabled on install, as Debian's services are (started too where systemd runs).
        assert (root / f"etc/systemd/system/multi-user.target.wants/{name}.service").is_symlink()
    # An estate, a pool with seats and a code, from the packaged broker's operator token.
    op = (root / "var/lib/tenure-broker/operator-token").read_text().strip()
    estate = call(f"{url}/v1/estates", op, {"name": "Acme Broadcast", "admin_name": "Alice"})
    e, admin = estate["id"], str(estate["admin_token"])
    purchase = call(
        f"{url}/v1/estates/{e}/purchases",
        op,
        {"sales_order": "SO-1", "licence_type": "one-in-one-out", "quantity": 4, "expires_at": "2099-01-01T00:00:00Z"},
    )
    pool = call(
        f"{url}/v1/estates/{e}/pools",
        admin,
        {"name": "Paris", "moves": [{"purchase_id": purchase["id"], "count": 2}]},
    )
    code = str(call(f"{url}/v1/estates/{e}/pools/{pool['id']}/auth-codes", admin, {})["code"])
    # The technician's command, as the service's user, against the broker on 127.0.0.1.
    enrolled = ok(chroot(root, "tenure-agent", "enroll", code, "--broker", url, "--name", "enc-7", user="tenure-agent"))
    assert 'Enrolled server "enc-7" in pool "Paris" of estate "Acme Broadcast".' in enrolled
    servers = call(f"{url}/v1/estates/{e}/servers", admin)
    assert [s["name"] for s in servers["items"]] == ["enc-7"]  # type: ignore[index]
    assert any((root / "var/lib/tenure-agent").iterdir())


def test_remove_keeps_configuration_and_data_purge_leaves_nothing(debian: Path, debs: dict[str, Path]) -> None:
    before = files(debian)
    for deb in debs.values():
        shutil.copy(deb, debian / "tmp" / deb.name)
    ok(chroot(debian, "apt-get", "install", "-y", "-q", *(f"/tmp/{d.name}" for d in debs.values()), offline=True))
    ok(chroot(debian, "tenure-broker", "keys", "rotate", "--data-dir", "/var/lib/tenure-broker"))  # some data
    # Installing over an installed package (as an upgrade does) keeps the admin's edits.
    conffile = debian / "etc/tenure/broker.toml"
    conffile.write_text(conffile.read_text() + "# edited by the admin\n")
    broker_deb = f"/tmp/{debs['tenure-broker'].name}"
    ok(chroot(debian, "apt-get", "install", "-y", "-q", "--reinstall", broker_deb, offline=True))
    assert conffile.read_text().endswith("# edited by the admin\n")
    assert (debian / "var/lib/tenure-broker/tenure.db").is_file()
    ok(chroot(debian, "apt-get", "remove", "-y", "-q", "tenure-agent", "tenure-broker", offline=True))
    assert not (debian / "usr/bin/tenure-agent").exists()
    assert not (debian / "usr/lib/tenure-broker").exists()  # byte-code compiled at install went too
    assert (debian / "etc/tenure/broker.toml").is_file()  # conffiles and data stay until purge
    assert any((debian / "var/lib/tenure-broker").iterdir())
    ok(chroot(debian, "apt-get", "purge", "-y", "-q", "tenure-agent", "tenure-broker", offline=True))
    for deb in debs.values():
        (debian / "tmp" / deb.name).unlink()
    assert files(debian) ^ before == set()
    assert "tenure" not in (debian / "etc/passwd").read_text()
    assert "tenure" not in (debian / "etc/group").read_text()


SETUP = """
import json, urllib.request
op = open("/var/lib/tenure-broker/operator-token").read().strip()
def call(path, token, body):
    req = urllib.request.Request("http://127.0.0.1:8400" + path, data=json.dumps(body).encode(),
                                 headers={"Authorization": "Bearer " + token}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as answer:
        return json.load(answer)
estate = call("/v1/estates", op, {"name": "Acme Broadcast", "admin_name": "Alice"})
e, admin = estate["id"], estate["admin_token"]
purchase = call(f"/v1/estates/{e}/purchases", op, {"sales_order": "SO-1", "licence_type": "one-in-one-out",
                                                  "quantity": 4, "expires_at": "2099-01-01T00:00:00Z"})
pool = call(f"/v1/estates/{e}/pools", admin, {"name": "Paris", "moves": [{"purchase_id": purchase["id"], "count": 2}]})
print(call(f"/v1/estates/{e}/pools/{pool['id']}/auth-codes", admin, {})["code"])
"""


def container_init(nspawn: subprocess.Popen[bytes], log: Path) -> int:
    """The PID (on this host) of systemd in the container ``nspawn`` boots."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert nspawn.poll() is None, log.read_text()
        children = Path(f"/proc/{nspawn.pid}/task/{nspawn.pid}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.1)
    raise AssertionError(f"systemd-nspawn started no container: {log.read_text()}")


def test_the_services_run_under_systemd(debian: Path, debs: dict[str, Path]) -> None:
    nspawn = need("systemd-nspawn")
    for deb in debs.values():
        shutil.copy(deb, debian / "root" / deb.name)  # /tmp is a tmpfs once systemd runs
    (debian / "root/setup.py").write_text(SETUP)
    log = debian.parent / "container.log"
    boot = [nspawn, "--quiet", "--directory", str(debian), "--boot", "--register=no", "--keep-unit"]
    boot += ["--private-network", "--console=passive"]  # no network: the install must need none
    with log.open("wb") as out:
        container = subprocess.Popen(
            boot,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        init = container_init(container, log)

        def inside(*command: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["nsenter", "--target", str(init), "--all", "--", *command],
                capture_output=True,
                text=True,
                timeout=300,
                env=ENV,
            )

        deadline = time.monotonic() + 60
        while True:  # until systemd in the container answers on its bus, then until it has booted
            booted = inside("systemctl", "is-system-running", "--wait")
            # "offline": systemd is not yet the container's init (seen on a busy machine)
            if booted.stdout.strip() not in ("", "offline") or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert booted.stdout.strip() in ("running", "degraded"), booted.stdout + booted.stderr + log.read_text()
        ok(inside("apt-get", "install", "-y", "-q", *(f"/root/{d.name}" for d in debs.values())))
        # Started by postinst; Type=notify: "active" means READY=1 came, once listening.
        assert inside("systemctl", "is-active", "tenure-broker", "tenure-agent").stdout.split() == ["active"] * 2
        status = ok(inside("systemctl", "show", "--property=StatusText", "--value", "tenure-broker"))
        # One worker per core by default (the container has the host's cores).
        processes = workers.count(Config())
        many = f"{processes} workers " if processes > 1 else ""
        assert status.strip() == f"{many}listening on http://127.0.0.1:8400"
        # Enrol and lease through the running services, sandboxed as their units say.
        code = ok(inside("python3.11", "/root/setup.py")).strip()
        enroll = ["tenure-agent", "enroll", code, "--broker", "http://127.0.0.1:8400", "--name", "enc-7"]
        assert "Enrolled server" in ok(inside("runuser", "-u", "tenure-agent", "--", *enroll))
        lease = ["tenure-agent", "lease", "ENC-0001", "--type", "one-in-one-out", "--count", "2"]
        assert "holds 2 one-in-one-out licences" in ok(inside("runuser", "-u", "tenure-agent", "--", *lease))
        assert "ENC-0001" in ok(inside("tenure-agent", "status"))  # exit 0: all is well
        # A stop releases the encoder's seats (SIGTERM, within TimeoutStopSec). Stopped together,
        # as at shutdown, the agent goes first (After=tenure-broker.service), while its broker
        # still answers.
        ok(inside("systemctl", "stop", "tenure-agent", "tenure-broker"))
        journal = ok(inside("journalctl", "--unit=tenure-agent", "--output=cat", "--no-pager"))
        assert "lease released: encoder ENC-0001" in journal
        ok(inside("apt-get", "purge", "-y", "-q", "tenure-agent", "tenure-broker"))
        assert inside("systemctl", "cat", "tenure-broker").returncode != 0  # the unit is gone
    finally:
        container.terminate()  # nspawn shuts the container down cleanly
        try:
            container.wait(timeout=60)
        except subprocess.TimeoutExpired:
            container.kill()
            container.wait()
