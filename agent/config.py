"""Agent settings: one frozen dataclass, built once from file, environment and flags.

Precedence is flags > ``TENURE_AGENT_*`` environment > TOML file > default. The file is
``/etc/tenure-agent/agent.toml`` unless ``--config`` or ``TENURE_AGENT_CONFIG`` names
another; the default file may be absent, a named one may not. A bad value stops the
command with a ``ConfigError`` that names the setting.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.access import Access
from agent.errors import ConfigError
from shared.settings import (
    NotAChoice,
    NotATable,
    OutOfRange,
    UnknownSetting,
    env_settings,
    file_settings,
    setting_value,
)

DEFAULT_CONFIG_FILE = Path("/etc/tenure-agent/agent.toml")
ENV_PREFIX = "TENURE_AGENT_"


def _setting(default: Any, help: str, **meta: Any) -> Any:
    return field(default=default, metadata={"help": help, **meta})


@dataclass(frozen=True)
class Config:
    broker_url: str | None = _setting(
        None,
        "The broker's URL, e.g. https://licences.example.com. Used by `enroll` when "
        "--broker is not given; a binding keeps the URL it was enrolled with.",
    )
    ca_file: Path | None = _setting(  # noqa: RUF009 - a field() with help metadata
        None,
        "PEM file of CA certificates that the broker's certificate must chain to. Unset: the system trust store.",
    )
    state_dir: Path = _setting(  # noqa: RUF009
        Path("/var/lib/tenure-agent"), "Directory for bindings and leases (kept mode 0700)."
    )
    socket: Path = _setting(  # noqa: RUF009
        Path("/run/tenure-agent/agent.sock"), "Unix socket of the local API for encoders."
    )
    socket_mode: int = _setting(0o660, 'Permissions of the socket, in octal ("0660").', octal=True, min=0, max=0o777)
    socket_group: str | None = _setting(None, "Group to own the socket, so that encoder software in it may connect.")
    keep_leases_on_stop: bool = _setting(
        False,
        "Keep leases on a clean stop instead of releasing them, for a quick restart "
        "(they are re-adopted at start, or lapse at their expiry).",
    )
    stop_timeout: float = _setting(10.0, "Seconds allowed for releasing leases on stop.", min=0.5, max=300)
    request_timeout: float = _setting(10.0, "Seconds allowed for one request to the broker.", min=0.5, max=300)
    retry_initial: float = _setting(
        1.0, "First retry delay in seconds (it doubles, with full jitter).", min=0.05, max=600
    )
    retry_max: float = _setting(60.0, "Longest retry delay in seconds.", min=0.1, max=3600)
    log_level: str = _setting("info", "Log level.", choices=("debug", "info", "warning", "error"))
    log_format: str = _setting(
        "auto",
        "Log line format: 'text', 'json' (one object a line: ts, level, logger, msg, a traceback "
        "as the one field exc), or 'auto': text when stderr is a terminal, json otherwise.",
        choices=("auto", "text", "json"),
    )
    local_api: Access = _setting(  # noqa: RUF009
        Access(),
        "Who may act for which encoders through the local API: a [local_api] table with an "
        "'allow' list of {user|group, domains?, encoders?} rules. Empty: anyone who can open "
        "the socket may act for every encoder.",
        parse=Access.from_setting,
    )

    def __post_init__(self) -> None:
        if self.broker_url is not None:
            object.__setattr__(self, "broker_url", check_broker_url(self.broker_url))
        if self.retry_max < self.retry_initial:
            raise ConfigError(
                f"setting 'retry_max' must be at least 'retry_initial' ({self.retry_max} < {self.retry_initial})"
            )


def settings() -> list[dataclasses.Field[Any]]:
    """The user-facing settings, in declaration order."""
    return list(dataclasses.fields(Config))


def env_name(setting: str) -> str:
    return ENV_PREFIX + setting.upper()


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_broker_url(url: str) -> str:
    """Return the broker URL without a trailing slash, or raise ``ConfigError``.

    HTTPS is required; plain HTTP is allowed only to a loopback address, where nothing
    on the wire can read or change it.
    """
    text = url.strip()
    try:
        parts = urlsplit(text)
        host = parts.hostname
        _ = parts.port
    except ValueError as exc:
        raise ConfigError(f'broker URL "{url}" is not a URL') from exc
    if parts.scheme not in ("https", "http") or not host:
        raise ConfigError(f'broker URL "{url}" is not an https:// URL, e.g. https://licences.example.com')
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(f'broker URL "{url}" must not carry a query, fragment or user')
    if parts.scheme == "http" and not is_loopback(host):
        raise ConfigError(
            f'refusing plain http:// broker URL "{url}": use https:// '
            "(plain http is allowed only to a loopback address)"
        )
    return text.rstrip("/")


def _convert(f: dataclasses.Field[Any], raw: Any, source: str) -> Any:
    where = f"setting '{f.name}' (from {source})"
    parse = f.metadata.get("parse")
    if parse is not None:  # a table, not a plain value
        try:
            return parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{where} {exc}") from exc
    if raw is None or (raw == "" and "None" in str(f.type)):
        return None
    try:
        return setting_value(f, raw)
    except NotAChoice as exc:
        raise ConfigError(f"{where} must be one of {', '.join(exc.choices)}; got {raw!r}") from exc
    except OutOfRange as exc:
        raise ConfigError(f"{where} must be between {exc.low} and {exc.high}; got {raw!r}") from exc
    except ValueError as exc:
        raise ConfigError(f"{where} has a bad value: {raw!r}") from exc


def _read_file(path: Path, known: Collection[str]) -> dict[str, Any]:
    import tomllib  # read at start only: see agent/cli.py, _load_config

    try:
        # Settings at the top level or under an [agent] table.
        table = file_settings(path, "agent", [*known, "agent"])
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except NotATable as exc:
        raise ConfigError(f"config file {path}: [agent] must be a table") from exc
    except UnknownSetting as exc:
        raise ConfigError(f"config file {path}: {exc}") from exc
    if "local_api" not in table:
        table = {**table, **_sibling_local_api(path)}
    return {k: v for k, v in table.items() if k != "agent"}


def _sibling_local_api(path: Path) -> dict[str, Any]:
    """A ``[local_api]`` table beside ``[agent]``: read, never silently ignored (it is
    what keeps one tenant's software from another's leases)."""
    import tomllib

    with path.open("rb") as handle:
        document = tomllib.load(handle)
    if "agent" in document and "local_api" in document:
        return {"local_api": document["local_api"]}
    return {}


def load_config(
    file: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the settings from ``file``, the environment and flag ``overrides``.

    ``overrides`` maps setting names to values given on the command line; ``None``
    values are ignored (the flag was not given).
    """
    env = os.environ if env is None else env
    known = {f.name: f for f in settings()}
    values: dict[str, Any] = {}

    named = file is not None or bool(env.get(ENV_PREFIX + "CONFIG"))
    path = file or Path(env.get(ENV_PREFIX + "CONFIG") or DEFAULT_CONFIG_FILE)
    if named or path.exists():
        for key, raw in _read_file(path, known).items():
            values[key] = _convert(known[key], raw, str(path))
    for name, (var, raw) in env_settings(env, ENV_PREFIX, known).items():
        values[name] = _convert(known[name], raw, var)
    for name, raw in (overrides or {}).items():
        if raw is None:
            continue
        if name not in known:
            raise ConfigError(f"unknown setting '{name}'")
        values[name] = _convert(known[name], raw, "command line") if isinstance(raw, str) else raw
    return Config(**values)
