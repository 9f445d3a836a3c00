"""shared.settings: one reading of a setting's value for the broker and the agent alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load_config
from agent.errors import ConfigError as AgentConfigError
from broker.config import ConfigError as BrokerConfigError
from broker.config import load
from broker.config import settings as broker_settings
from shared.settings import (
    NotAChoice,
    NotATable,
    OutOfRange,
    UnknownSetting,
    env_settings,
    file_settings,
    parse_value,
    setting_value,
)


@pytest.mark.parametrize(
    ("kind", "raw", "expected"),
    [
        ("int", "42", 42),
        ("int", 42, 42),
        ("float", "0.5", 0.5),
        ("float", 2, 2.0),
        ("bool", "yes", True),
        ("bool", "off", False),
        ("bool", True, True),
        ("Path | None", "/var/lib/x", Path("/var/lib/x")),
        ("str", "info", "info"),
        ("int", None, None),
    ],
)
def test_values_of_each_kind(kind: str, raw: object, expected: object) -> None:
    assert parse_value(kind, raw) == expected


def test_octal_modes() -> None:
    assert parse_value("int", "0660", octal=True) == 0o660


@pytest.mark.parametrize(
    ("kind", "raw"),
    [
        ("int", True),
        ("int", 1.5),
        ("int", "ten"),
        ("float", "nan"),
        ("float", "inf"),
        ("float", False),
        ("bool", "maybe"),
        ("Path", ""),
        ("str", 5),
    ],
)
def test_bad_values_refused(kind: str, raw: object) -> None:
    with pytest.raises(ValueError):
        parse_value(kind, raw)


def test_nan_is_refused_by_both_configs(tmp_path: Path) -> None:
    with pytest.raises(BrokerConfigError, match="reaper_interval_seconds"):
        load(None, env={"TENURE_REAPER_INTERVAL_SECONDS": "nan"})
    with pytest.raises(AgentConfigError, match="retry_max"):
        empty = tmp_path / "agent.toml"
        empty.write_text("")
        load_config(empty, env={"TENURE_AGENT_RETRY_MAX": "nan"})


def test_a_file_table_or_its_top_level_and_no_unknown_key(tmp_path: Path) -> None:
    file = tmp_path / "both.toml"
    file.write_text("port = 1\n[broker]\nport = 8500\n")
    assert file_settings(file, "broker", ["port"]) == {"port": 8500}
    assert file_settings(file, "agent", ["port", "broker"])["port"] == 1
    file.write_text("broker = 5\n")
    with pytest.raises(NotATable):
        file_settings(file, "broker", ["port"])
    file.write_text("[broker]\nprot = 8500\n")
    with pytest.raises(UnknownSetting, match="'prot'"):
        file_settings(file, "broker", ["port"])


def test_environment_variables_are_the_prefix_and_the_name_in_capitals() -> None:
    env = {"TENURE_PORT": "1", "TENURE_AGENT_PORT": "2", "PORT": "3"}
    assert env_settings(env, "TENURE_", ["port", "host"]) == {"port": ("TENURE_PORT", "1")}
    assert env_settings(env, "TENURE_AGENT_", ["port"]) == {"port": ("TENURE_AGENT_PORT", "2")}


def test_a_value_is_checked_against_its_setting() -> None:
    port = next(f for f in broker_settings() if f.name == "port")
    level = next(f for f in broker_settings() if f.name == "log_level")
    assert setting_value(port, "8500") == 8500
    with pytest.raises(OutOfRange):
        setting_value(port, 70000)
    with pytest.raises(NotAChoice):
        setting_value(level, "loud")
    with pytest.raises(ValueError):
        setting_value(port, "eighty")
