"""Broker settings: one frozen dataclass, built once from file, environment and flags.

Precedence is flags > ``TENURE_*`` environment > TOML file > default. A bad value
stops start-up with a ``ConfigError`` that names the setting.
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import os
import re
import tomllib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.clock import Clock, SystemClock
from shared.settings import (
    NotAChoice,
    NotATable,
    OutOfRange,
    UnknownSetting,
    env_settings,
    file_settings,
    setting_value,
)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Settings that no longer exist, and what to do instead: start-up stops rather than
# silently ignoring a line the operator relies on.
_RETIRED = {
    "trust_forwarded_for": "setting 'trust_forwarded_for' is gone: list the reverse proxies "
    "whose X-Forwarded-For the broker may believe in 'trusted_proxies' instead "
    '(e.g. trusted_proxies = ["127.0.0.1/32", "::1/128"] for a proxy on this host), '
    "and remove 'trust_forwarded_for'",
}


MAX_WORKERS = 64


class ConfigError(Exception):
    """A setting is missing or malformed; the message names it."""


def _setting(default: Any, help: str, **meta: Any) -> Any:
    return field(default=default, metadata={"help": help, **meta})


@dataclass(frozen=True)
class Config:
    data_dir: Path = _setting(Path("tenure-data"), "Directory for the database, keys and operator token.")
    host: str = _setting("127.0.0.1", "Address to listen on.")
    port: int = _setting(8400, "TCP port to listen on.", min=0, max=65535)
    operator_token: str | None = _setting(
        None,
        "The operator's bearer token (tnr_op_…). When unset, one is generated on first "
        "start into DATA_DIR/operator-token (mode 0600). Prefer the environment variable.",
        secret=True,
    )
    metrics_token: str | None = _setting(
        None,
        "A read-only bearer token (tnr_met_ and at least 25 more characters) that opens "
        "/metrics and nothing else, so that a Prometheus server holds no operator "
        "credentials. The operator token reads /metrics too. Prefer the environment variable.",
        secret=True,
    )
    secret_key: str | None = _setting(
        None,
        "The deployment's secret key: 32 random bytes in base64, under which the signing keys "
        "and the code key are sealed in the database. When neither it nor secret_key_file is "
        "set, one is generated on first start into DATA_DIR/secret-key (mode 0600). Prefer the "
        "environment variable.",
        secret=True,
    )
    secret_key_file: Path | None = _setting(
        None, "A file holding the secret key (base64, as secret_key), e.g. a mounted secret."
    )
    tls_cert: Path | None = _setting(None, "PEM certificate chain; with tls_key, serve HTTPS.")
    tls_key: Path | None = _setting(None, "PEM private key for tls_cert.")
    public_url: str | None = _setting(
        None, "The URL agents use to reach this broker (shown in the console's enrol command)."
    )
    database: str | None = _setting(
        None,
        "A PostgreSQL database shared by every broker replica: "
        "postgresql://USER[:PASSWORD]@HOST[:PORT]/DB (query options such as sslmode are passed "
        "through; also TENURE_DATABASE_URL). Unset: SQLite in the data directory. With it, "
        "secret_key (or secret_key_file) must be given, and to serve operator_token too, the same on every replica.",
        secret=True,
    )
    database_pool_size: int = _setting(
        10, "PostgreSQL: connections each broker process keeps open at most.", min=1, max=1000
    )
    database_timeout_seconds: float = _setting(
        5.0,
        "PostgreSQL: how long a request waits to connect, for a free connection or for a lock, and how "
        "long the database may leave what is sent unacknowledged, before 503 storage_unavailable.",
        min=0.1,
        max=300,
    )
    sqlite_synchronous: str = _setting(
        "full",
        "SQLite durability: 'full' (an acknowledged write survives power loss) or 'normal' "
        "(survives a process crash; may lose the last commits on power loss).",
        choices=("full", "normal"),
    )
    workers: str = _setting(
        "auto",
        "Broker processes serving one address (serve): a whole number 1-64, or 'auto' (1 today: "
        "several measure faster, but /metrics then answers for one at a time; docs/performance.md).",
        workers=True,
    )
    log_level: str = _setting("info", "Log level.", choices=("debug", "info", "warning", "error"))
    log_format: str = _setting(
        "auto",
        "Log line format: 'text' (for a person), 'json' (one object a line: ts, level, logger, msg, "
        "and on request lines request_id, method, route, status, duration_ms, estate, principal_kind, "
        "principal_id; a traceback as the one field exc), or 'auto': text when stderr is a terminal, "
        "json otherwise.",
        choices=("auto", "text", "json"),
    )
    access_log: bool = _setting(True, "Log one line per request (logger tenure.access, INFO).")
    default_lease_seconds: int = _setting(3600, "Lease lifetime of new pools.", min=60, max=30 * 86400)
    code_ttl_seconds: int = _setting(86400, "Default lifetime of an authentication code.", min=60, max=7 * 86400)
    redeem_failures_per_address: int = _setting(
        10, "Failed code redemptions allowed per client address per window.", min=1, max=10**6
    )
    redeem_failures_global: int = _setting(
        100,
        "Failed code redemptions from all addresses together per window before the broker is "
        "under attack and lets each network fail only once per window (not a lockout).",
        min=1,
        max=10**9,
    )
    redeem_window_seconds: int = _setting(900, "Window of the redemption rate limits.", min=1, max=86400)
    trusted_proxies: tuple[IPNetwork, ...] = _setting(
        (),
        "Reverse proxies (CIDRs) whose X-Forwarded-For and X-Forwarded-Proto are believed; "
        "the client is the rightmost forwarded address that is not one of them.",
        cidrs=True,
    )
    body_timeout_seconds: float = _setting(
        10.0, "How long a request body may take to arrive before 408 request_timeout.", min=0.05, max=600
    )
    reaper_interval_seconds: float = _setting(
        5.0, "How often lapsed leases are recorded in the audit log.", min=0.05, max=3600
    )
    usage_check_seconds: float = _setting(
        60.0,
        "How often each broker checks whether the five-minute usage round (the history behind "
        "the usage charts) is still to be sampled; one broker samples each round.",
        min=0.05,
        max=300,
    )
    key_reload_seconds: float = _setting(
        30.0,
        "How often the signing-key directory is re-read (keys rotate without restart).",
        min=0.05,
        max=60,
    )
    webhook_allow_private: bool = _setting(
        False,
        "Let webhooks go to loopback, private, link-local and other non-public addresses, and to "
        "http:// URLs: for receivers on the operator's own network. Off, such URLs are refused.",
    )
    webhook_timeout_seconds: float = _setting(
        10.0, "How long one webhook delivery attempt may take before it counts as failed.", min=0.5, max=120
    )
    webhook_poll_seconds: float = _setting(
        1.0, "How often each broker looks for webhook deliveries that are due.", min=0.01, max=60
    )
    webhook_scan_seconds: float = _setting(
        60.0, "How often purchases are checked for expiry events (purchase.expiring and after).", min=0.05, max=3600
    )
    stream_heartbeat_seconds: float = _setting(
        15.0,
        "How often GET /v1/stream sends a heartbeat (a comment line) on an idle stream, so that "
        "proxies keep it open and agents notice a dead one (after three missed).",
        min=0.05,
        max=300,
    )
    stream_poll_seconds: float = _setting(
        10.0,
        "How often each broker process looks for stream events it was not woken for (the "
        "safety net under PostgreSQL LISTEN/NOTIFY, and what picks up a `keys rotate` run from "
        "another process on SQLite).",
        min=0.05,
        max=300,
    )
    stream_retention_seconds: int = _setting(
        7 * 86400,
        "How long stream events are kept for agents that resume with Last-Event-ID; one that "
        "resumes from before is told to resync (renew everything).",
        min=60,
        max=90 * 86400,
    )
    stream_max_per_server: int = _setting(
        2,
        "Open streams per server and broker process; a new one beyond this ends the oldest.",
        min=1,
        max=100,
    )
    clock: Clock = field(default_factory=SystemClock, metadata={"internal": True}, compare=False)
    webhook_schedule: tuple[float, ...] | None = field(default=None, metadata={"internal": True}, compare=False)
    """Delays between delivery attempts (default ``broker.webhooks.delivery.SCHEDULE``); tests shorten it."""
    webhook_resolve: Callable[[str, int], Awaitable[list[str]]] | None = field(
        default=None, metadata={"internal": True}, compare=False
    )
    """How webhook host names are resolved (default: the system's resolver); tests map names."""
    # Set by ``serve --workers`` on SQLite for its workers: hot writes go to the writer
    # process (broker.store.relay).
    relay_writes: bool = field(default=False, metadata={"internal": True})
    # Set by ``serve --workers`` for every process: where each writes what it counted, for
    # /metrics to sum (broker.figures).
    figures_dir: Path | None = field(default=None, metadata={"internal": True})

    @property
    def db_path(self) -> Path:
        return self.data_dir / "tenure.db"

    def __repr__(self) -> str:  # no token or secret key ever reaches a log line
        shown = ", ".join(
            f"{f.name}={'***' if f.metadata.get('secret') and getattr(self, f.name) else getattr(self, f.name)!r}"
            for f in settings()
        )
        return f"Config({shown})"


def settings() -> list[dataclasses.Field[Any]]:
    """The user-facing settings, in declaration order."""
    return [f for f in dataclasses.fields(Config) if not f.metadata.get("internal")]


def _cidrs(raw: Any) -> tuple[IPNetwork, ...]:
    """A TOML list of CIDRs, or the same as one comma-separated string (the environment)."""
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, list | tuple):
        raise ValueError("not a list of CIDRs")
    found: list[IPNetwork] = []
    for item in items:
        if isinstance(item, ipaddress.IPv4Network | ipaddress.IPv6Network):
            found.append(item)
        elif not isinstance(item, str):
            raise ValueError("not a list of CIDRs")
        elif item.strip():
            found.append(ipaddress.ip_network(item.strip(), strict=False))
    return tuple(found)


def _convert(f: dataclasses.Field[Any], raw: Any, source: str) -> Any:
    where = f"setting '{f.name}' (from {source})"
    if f.metadata.get("workers"):
        text = str(raw).strip().lower() if isinstance(raw, str | int) and not isinstance(raw, bool) else ""
        if text == "auto" or (text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_WORKERS):
            return text
        raise ConfigError(f"{where}: {raw!r} is not 'auto' or a whole number 1..{MAX_WORKERS}")
    if f.metadata.get("cidrs"):
        try:
            return _cidrs(raw)
        except ValueError as exc:
            raise ConfigError(f"{where}: {raw!r} is not a list of CIDRs such as 10.0.0.0/8, ::1/128") from exc
    try:
        return setting_value(f, raw)
    except (OutOfRange, NotAChoice) as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {raw!r} is not a valid {str(f.type).split(' ')[0]}") from exc


def _file_values(file: Path, known: Mapping[str, dataclasses.Field[Any]]) -> dict[str, Any]:
    """The settings of TOML ``file`` (its ``[broker]`` table, else its top level), converted."""
    where = f"config file {file}"
    try:
        table = file_settings(Path(file), "broker", known)
    except OSError as exc:
        raise ConfigError(f"{where}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    except NotATable as exc:
        raise ConfigError(f"{where}: 'broker' must be a table ([broker])") from exc
    except UnknownSetting as exc:
        raise ConfigError(f"{where}: {_RETIRED.get(exc.name, exc)}") from exc
    return {key: _convert(known[key], raw, where) for key, raw in table.items()}


def load(
    file: Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> Config:
    """Build the config: flags > environment > file > defaults; ``overrides`` win over all."""
    env = os.environ if env is None else env
    known = {f.name: f for f in settings()}
    for name, (var, _) in env_settings(env, "TENURE_", _RETIRED).items():
        raise ConfigError(f"environment {var}: {_RETIRED[name]}")
    values = {} if file is None else _file_values(file, known)
    given = env_settings(env, "TENURE_", known)
    if env.get("TENURE_DATABASE_URL"):  # the name operators and container platforms expect
        given.setdefault("database", ("TENURE_DATABASE_URL", env["TENURE_DATABASE_URL"]))
    for name, (var, raw) in given.items():
        if raw != "":
            values[name] = _convert(known[name], raw, f"environment {var}")
    for name, raw in (flags or {}).items():
        if raw is not None:
            values[name] = _convert(known[name], raw, f"--{name.replace('_', '-')}")
    for name, raw in overrides.items():
        checked = name in known and (known[name].metadata.get("cidrs") or known[name].metadata.get("workers"))
        values[name] = _convert(known[name], raw, "overrides") if checked else raw
    if (values.get("tls_cert") is None) != (values.get("tls_key") is None):
        raise ConfigError("settings 'tls_cert' and 'tls_key' go together: give both or neither")
    token = values.get("operator_token")
    if token is not None and (not token.startswith("tnr_op_") or len(token) < 32):
        raise ConfigError("setting 'operator_token' must start with tnr_op_ and be at least 32 characters")
    _check_secret_key(values)
    _check_database(values)
    metrics = values.get("metrics_token")
    if metrics is not None and not _METRICS_TOKEN.fullmatch(metrics):
        raise ConfigError(
            "setting 'metrics_token' must start with tnr_met_ and go on with at least 25 "
            "printable ASCII characters (no spaces)"
        )
    return Config(**values)


def _check_secret_key(values: Mapping[str, Any]) -> None:
    if values.get("secret_key") is not None and values.get("secret_key_file") is not None:
        raise ConfigError("settings 'secret_key' and 'secret_key_file' are two ways to give one key: give one")
    key, where = values.get("secret_key"), "setting 'secret_key'"
    file = values.get("secret_key_file")
    if file is not None:  # read now, so that a bad file stops start-up before anything is made
        where = f"setting 'secret_key_file' ({file})"
        try:
            key = Path(file).read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not base64 text"
            raise ConfigError(f"{where}: cannot read it: {reason}") from exc
    if key is not None:
        try:
            raw = base64.b64decode(str(key).strip(), validate=True)
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise ConfigError(
                f"{where} must be 32 random bytes in base64 (44 characters, e.g. "
                "from `head -c 32 /dev/urandom | base64`)"
            )


def _check_database(values: Mapping[str, Any]) -> None:
    url = values.get("database")
    if url is None:
        return
    if not _DATABASE_URL.match(str(url)):
        raise ConfigError(
            "setting 'database' must be a PostgreSQL URL: postgresql://USER[:PASSWORD]@HOST[:PORT]/DB "
            "(leave it unset for the embedded SQLite database)"
        )
    if values.get("secret_key") is None and values.get("secret_key_file") is None:
        raise ConfigError(
            "setting 'secret_key' (or 'secret_key_file') is required with a PostgreSQL database: every "
            "replica seals and opens the keys in it with the same secret key (e.g. TENURE_SECRET_KEY from "
            "`head -c 32 /dev/urandom | base64`)"
        )


_DATABASE_URL = re.compile(r"^postgres(ql)?://[^/?#]*/[^/?#]+([?].*)?$")
_METRICS_TOKEN = re.compile("tnr_met_[!-~]{25,}")
