"""shared.settings: one reading of a setting's value for the broker and the agent alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load_config
from agent.errors import ConfigError as AgentConfigError
from broker.config import ConfigError as BrokerConfigError
from broker.config import load
from shared.settings import parse_value


@pytest.mark.parametrize(("kind", "raw", "expected"), [
    ("int", "42", 42), ("int", 42, 42), ("float", "0.5", 0.5), ("float", 2, 2.0),
    ("bool", "yes", True), ("bool", "off", False), ("bool", True, True),
    ("Path | None", "/var/lib/x", Path("/var/lib/x")), ("str", "info", "info"),
    ("int", None, None),
])
def test_values_of_each_kind(kind: str, raw: object, expected: object) -> None:
    assert parse_value(kind, raw) == expected


def test_octal_modes() -> None:
    assert parse_value("int", "0660", octal=True) == 0o660


@pytest.mark.parametrize(("kind", "raw"), [
    ("int", True), ("int", 1.5), ("int", "ten"), ("float", "nan"), ("float", "inf"),
    ("float", False), ("bool", "maybe"), ("Path", ""), ("str", 5),
])
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
