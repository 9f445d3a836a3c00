"""The bindings file: private, and read back as written."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from agent.bindings import Binding, Bindings, load_bindings, save_bindings
from agent.errors import StateError
from shared.secret import Secret


def _binding(kind: str = "server", name: str = "enc-host-7") -> Binding:
    return Binding(
        kind=kind,
        name=name,
        server_id="srv_1",
        token=Secret("tnr_srv_SECRET"),
        estate_id="est_1",
        estate_name="Acme",
        pool_id="pool_1",
        pool_name="Paris",
        broker_url="https://b.example",
        keys={"keys": []},
        enrolled_at=1,
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_bindings_round_trip_and_state_dir_is_0700(tmp_path: Path) -> None:
    state = tmp_path / "state"
    bindings = Bindings()
    bindings.put(_binding())
    bindings.put(_binding("domain", "tenant-a"))
    save_bindings(state, bindings)
    assert mode(state) == 0o700
    assert mode(state / "bindings.json") == 0o600
    back = load_bindings(state)
    assert back.server == _binding()
    assert back.get("tenant-a") == _binding("domain", "tenant-a")
    assert back.get("other") is None


def test_secrets_never_show_themselves() -> None:
    binding = _binding()
    assert "tnr_srv_SECRET" not in repr(binding)
    assert "tnr_srv_SECRET" not in str(binding.token)
    assert "tnr_srv_SECRET" not in f"{binding.token}" and binding.token.reveal() == "tnr_srv_SECRET"


@pytest.mark.parametrize("text", ["{not json", '{"format": 99}', '{"format": 1, "server": {"kind": "server"}}'])
def test_a_damaged_file_is_a_clear_error(tmp_path: Path, text: str) -> None:
    (tmp_path / "bindings.json").write_text(text)
    with pytest.raises(StateError, match=r"bindings\.json"):
        load_bindings(tmp_path)


def test_no_bindings_file_means_no_bindings(tmp_path: Path) -> None:
    assert load_bindings(tmp_path).all() == []
