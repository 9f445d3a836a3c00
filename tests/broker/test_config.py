"""Settings: flags > environment > file > default; a bad value names the setting;
every setting is documented."""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
from pathlib import Path

import pytest

from broker.config import Config, ConfigError, load, settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
TOKEN = "tnr_op_" + "a" * 40


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "broker.toml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    cfg = load(None, env={})
    assert (cfg.data_dir, cfg.host, cfg.port) == (Path("tenure-data"), "127.0.0.1", 8400)
    assert cfg.operator_token is None and cfg.sqlite_synchronous == "full"
    assert cfg.default_lease_seconds == 3600 and cfg.code_ttl_seconds == 86400
    assert cfg.db_path == Path("tenure-data") / "tenure.db"


def test_precedence_flags_over_env_over_file_over_default(tmp_path: Path) -> None:
    file = write(tmp_path, 'port = 1001\nhost = "10.0.0.1"\nlog_level = "debug"\n')
    env = {"TENURE_PORT": "1002", "TENURE_HOST": "10.0.0.2"}
    flags = {"port": "1003"}
    cfg = load(file, env=env, flags=flags)
    assert (cfg.port, cfg.host, cfg.log_level, cfg.code_ttl_seconds) == (1003, "10.0.0.2", "debug", 86400)
    cfg = load(file, env=env, flags={"port": None})
    assert (cfg.port, cfg.host) == (1002, "10.0.0.2")
    cfg = load(file, env={})
    assert (cfg.port, cfg.host) == (1001, "10.0.0.1")
    assert load(None, env={}).port == 8400


def test_broker_section_in_the_file(tmp_path: Path) -> None:
    file = write(
        tmp_path,
        '[broker]\ndata_dir = "/srv/tenure"\ntrusted_proxies = ["10.0.0.0/8"]\nreaper_interval_seconds = 1.5\n',
    )
    cfg = load(file, env={})
    assert cfg.data_dir == Path("/srv/tenure") and cfg.trusted_proxies == (ipaddress.ip_network("10.0.0.0/8"),)
    assert cfg.reaper_interval_seconds == 1.5


def test_environment_values_are_converted() -> None:
    cfg = load(
        None,
        env={
            "TENURE_TRUSTED_PROXIES": "127.0.0.1/32, ::1/128",
            "TENURE_DATA_DIR": "/tmp/x",
            "TENURE_KEY_RELOAD_SECONDS": "2.5",
            "TENURE_OPERATOR_TOKEN": TOKEN,
            "TENURE_SQLITE_SYNCHRONOUS": "normal",
        },
    )
    assert cfg.trusted_proxies == (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128"))
    assert cfg.data_dir == Path("/tmp/x")
    assert cfg.key_reload_seconds == 2.5 and cfg.operator_token == TOKEN
    assert cfg.sqlite_synchronous == "normal"
    # An empty variable counts as unset.
    assert load(None, env={"TENURE_PORT": ""}).port == 8400


@pytest.mark.parametrize(
    "env, setting",
    [
        ({"TENURE_PORT": "eighty"}, "port"),
        ({"TENURE_PORT": "70000"}, "port"),
        ({"TENURE_PORT": "-1"}, "port"),
        ({"TENURE_SQLITE_SYNCHRONOUS": "off"}, "sqlite_synchronous"),
        ({"TENURE_LOG_LEVEL": "loud"}, "log_level"),
        ({"TENURE_TRUSTED_PROXIES": "10.0.0.0/33"}, "trusted_proxies"),
        ({"TENURE_TRUSTED_PROXIES": "nginx"}, "trusted_proxies"),
        ({"TENURE_TRUST_FORWARDED_FOR": "true"}, "trust_forwarded_for"),
        ({"TENURE_BODY_TIMEOUT_SECONDS": "0"}, "body_timeout_seconds"),
        ({"TENURE_DEFAULT_LEASE_SECONDS": "59"}, "default_lease_seconds"),
        ({"TENURE_CODE_TTL_SECONDS": "604801"}, "code_ttl_seconds"),
        ({"TENURE_REAPER_INTERVAL_SECONDS": "nan"}, "reaper_interval_seconds"),
        ({"TENURE_KEY_RELOAD_SECONDS": "inf"}, "key_reload_seconds"),
        ({"TENURE_KEY_RELOAD_SECONDS": "soon"}, "key_reload_seconds"),
        ({"TENURE_OPERATOR_TOKEN": "short"}, "operator_token"),
        ({"TENURE_OPERATOR_TOKEN": "tnr_adm_" + "a" * 40}, "operator_token"),
        ({"TENURE_TLS_CERT": "/etc/cert.pem"}, "tls_cert"),
    ],
)
def test_bad_environment_values_name_the_setting(env: dict[str, str], setting: str) -> None:
    with pytest.raises(ConfigError, match=f"'{setting}'"):
        load(None, env=env)


@pytest.mark.parametrize(
    "text, setting",
    [
        ("port = 8400.5", "port"),
        ('port = "x"', "port"),
        ("port = true", "port"),
        ("trust_forwarded_for = true", "trusted_proxies"),
        ("trusted_proxies = 3", "trusted_proxies"),
        ('trusted_proxies = ["10.0.0.0/8", 4]', "trusted_proxies"),
        ('host = ["a"]', "host"),
        ('data_dir = ""', "data_dir"),
        ("colour = 'blue'", "colour"),
        ("[broker]\nprot = 1", "prot"),
    ],
)
def test_bad_file_values_name_the_setting(tmp_path: Path, text: str, setting: str) -> None:
    with pytest.raises(ConfigError, match=f"'{setting}'"):
        load(write(tmp_path, text), env={})


def test_bad_flag_names_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"'port'.*--port"):
        load(None, env={}, flags={"port": "http"})


@pytest.mark.parametrize("text", ["port = ", "[broker", "broker = 5"])
def test_malformed_file_is_a_config_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match=r"broker\.toml"):
        load(write(tmp_path, text), env={})


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml"):
        load(tmp_path / "nope.toml", env={})


def test_tls_needs_both_halves(tmp_path: Path) -> None:
    cfg = load(None, env={"TENURE_TLS_CERT": "/c.pem", "TENURE_TLS_KEY": "/k.pem"})
    assert cfg.tls_cert == Path("/c.pem") and cfg.tls_key == Path("/k.pem")
    with pytest.raises(ConfigError, match="tls_key"):
        load(None, env={}, flags={"tls_cert": "/c.pem"})


def test_config_is_frozen_and_its_repr_hides_the_token() -> None:
    cfg = load(None, env={"TENURE_OPERATOR_TOKEN": TOKEN})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.port = 1  # type: ignore[misc]
    assert TOKEN not in repr(cfg) and "operator_token='***'" in repr(cfg)


def test_every_setting_has_a_default_and_help() -> None:
    for f in settings():
        assert f.default is not dataclasses.MISSING, f.name
        assert f.metadata.get("help"), f.name
    internal = {f.name for f in dataclasses.fields(Config)} - {f.name for f in settings()}
    # Set by the code or injected by tests, never by an operator.
    assert internal == {"clock", "webhook_schedule", "webhook_resolve", "relay_writes", "figures_dir"}


def test_every_setting_is_documented() -> None:
    text = DOC.read_text()
    missing = [f.name for f in settings() if f"`{f.name}`" not in text]
    assert not missing, f"settings not in {DOC.name}: {missing}"
    # And with its environment variable spelled out (or the rule that makes it).
    assert "TENURE_" in text


def test_documented_defaults_match() -> None:
    """Each setting's row in the doc's table shows its real default."""
    rows = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].startswith("`") and cells[0].endswith("`"):
            rows[cells[0].strip("`")] = cells[1]
    for f in settings():
        if f.name not in rows:
            continue  # test_every_setting_is_documented reports it
        default = f.default
        if default is None or default == () or f.name == "data_dir":
            continue
        shown = str(default).lower() if isinstance(default, bool) else str(default)
        if isinstance(default, float) and default.is_integer():
            shown = str(int(default))
        assert shown in rows[f.name], (f.name, rows[f.name])


def test_the_secret_key_is_masked_and_may_come_from_a_file(tmp_path: Path) -> None:
    key = base64.b64encode(bytes(range(32))).decode()
    cfg = load(None, env={"TENURE_SECRET_KEY": key})
    assert cfg.secret_key == key and key not in repr(cfg) and "secret_key='***'" in repr(cfg)
    file = tmp_path / "secret"
    file.write_text(key + "\n")
    assert load(None, env={"TENURE_SECRET_KEY_FILE": str(file)}).secret_key_file == file
    file.write_text(key[:-4] + "\n")
    with pytest.raises(ConfigError, match="'secret_key_file'"):
        load(None, env={"TENURE_SECRET_KEY_FILE": str(file)})


@pytest.mark.parametrize("value", ["auto", "1", "2", "64", " AUTO "])
def test_workers_is_auto_or_a_count(value: str) -> None:
    assert load(None, env={"TENURE_WORKERS": value}).workers == value.strip().lower()


@pytest.mark.parametrize("value", ["0", "65", "two", "-1", "1.5"])
def test_a_bad_workers_value_names_the_setting(value: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="setting 'workers'"):
        load(None, env={"TENURE_WORKERS": value})
    assert load(write(tmp_path, "workers = 3\n"), env={}).workers == "3"
