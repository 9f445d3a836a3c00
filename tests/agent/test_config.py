"""Settings: precedence, errors that name the key, the broker URL rule, documentation."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import Config, check_broker_url, env_name, load_config, settings
from agent.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_match_the_contract(tmp_path: Path) -> None:
    config = load_config(None, env={}, overrides={})
    assert config.state_dir == Path("/var/lib/tenure-agent")
    assert config.socket == Path("/run/tenure-agent/agent.sock")
    assert config.socket_mode == 0o660
    assert config.keep_leases_on_stop is False


def test_flags_beat_environment_beat_file(tmp_path: Path) -> None:
    file = tmp_path / "agent.toml"
    file.write_text('state_dir = "/from/file"\nsocket = "/from/file.sock"\nretry_max = 30\nsocket_mode = "0640"\n')
    config = load_config(
        file,
        env={"TENURE_AGENT_SOCKET": "/from/env.sock", "TENURE_AGENT_RETRY_MAX": "20"},
        overrides={"socket": "/from/flag.sock", "state_dir": None},
    )
    assert config.state_dir == Path("/from/file")
    assert config.socket == Path("/from/flag.sock")
    assert config.retry_max == 20.0
    assert config.socket_mode == 0o640


def test_an_agent_table_is_accepted(tmp_path: Path) -> None:
    file = tmp_path / "agent.toml"
    file.write_text('[agent]\nbroker_url = "https://licences.example.com/"\n')
    assert load_config(file, env={}).broker_url == "https://licences.example.com"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("retry_max = 'soon'", "setting 'retry_max' (from"),
        ("colour = 'blue'", "unknown setting 'colour'"),
        ("log_level = 'chatty'", "setting 'log_level' (from"),
        ("stop_timeout = 0", "setting 'stop_timeout' (from"),
        ("keep_leases_on_stop = 'perhaps'", "setting 'keep_leases_on_stop'"),
        ("state_dir = [", "is not valid TOML"),
    ],
)
def test_a_bad_file_value_names_the_setting(tmp_path: Path, text: str, message: str) -> None:
    file = tmp_path / "agent.toml"
    file.write_text(text + "\n")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_config(file, env={})


def test_a_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="TENURE_AGENT_REQUEST_TIMEOUT"):
        load_config(None, env={"TENURE_AGENT_REQUEST_TIMEOUT": "never"})


def test_a_named_config_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.toml", env={})
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(None, env={"TENURE_AGENT_CONFIG": str(tmp_path / "missing.toml")})


@pytest.mark.parametrize(
    "url",
    [
        "https://licences.example.com",
        "http://127.0.0.1:8400",
        "http://[::1]:8400",
        "http://localhost:8400",
        "https://10.0.0.5:8443/",
    ],
)
def test_secure_or_loopback_urls_are_accepted(url: str) -> None:
    assert check_broker_url(url) == url.rstrip("/")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://licences.example.com", "refusing plain http://"),
        ("http://10.0.0.5:8400", "refusing plain http://"),
        ("ftp://licences.example.com", "is not an https:// URL"),
        ("licences.example.com", "is not an https:// URL"),
        ("https://user:pw@licences.example.com", "must not carry"),
    ],
)
def test_insecure_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_broker_url(url)
    with pytest.raises(ConfigError, match=message):
        Config(broker_url=url)


def test_retry_max_below_initial_is_refused() -> None:
    with pytest.raises(ConfigError, match="retry_max"):
        Config(retry_initial=5, retry_max=1)


def test_every_setting_is_documented_with_its_default() -> None:
    docs = (ROOT / "docs" / "agent.md").read_text()
    example = (ROOT / "deploy" / "agent.example.toml").read_text()
    for f in settings():
        assert f.metadata.get("help"), f.name
        assert f"`{f.name}`" in docs, f"{f.name} missing from docs/agent.md"
        assert env_name(f.name) in docs, f"{env_name(f.name)} missing from docs/agent.md"
        assert f.name in example, f"{f.name} missing from deploy/agent.example.toml"


def test_the_example_config_loads(tmp_path: Path) -> None:
    config = load_config(ROOT / "deploy" / "agent.example.toml", env={})
    assert config.state_dir == Path("/var/lib/tenure-agent")
