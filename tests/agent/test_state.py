"""What survives a restart: atomic, private files that read back as written."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from agent.errors import StateError
from agent.state import (
    Binding,
    Bindings,
    EncoderRecord,
    Held,
    LeaseState,
    Secret,
    Want,
    atomic_write,
    ensure_dir,
    load_bindings,
    load_leases,
    save_bindings,
    save_leases,
)


def _binding(kind: str = "server", name: str = "enc-host-7") -> Binding:
    return Binding(kind=kind, name=name, server_id="srv_1", token=Secret("tnr_srv_SECRET"),
                   estate_id="est_1", estate_name="Acme", pool_id="pool_1", pool_name="Paris",
                   broker_url="https://b.example", keys={"keys": []}, enrolled_at=1)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_write_is_private_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    target.write_text("old")
    os.chmod(target, 0o644)
    old_umask = os.umask(0)
    try:
        atomic_write(target, b"new")
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b"new"
    assert mode(target) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


def test_a_failed_write_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "f.json"
    target.write_text("old")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        atomic_write(target, b"new")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


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


def test_leases_round_trip(tmp_path: Path) -> None:
    held = Held(lease_id="lse_1", token=Secret("a.b.c"), licence_type="one-in-one-out", count=3,
                domain=None, server_id="srv_1", expires_at=2000, renew_after=1400,
                deadline=1999.5, renew_at=1450.25, purchase_state="valid",
                seats=({"purchase_id": "pur_1", "count": 3},))
    state = LeaseState(encoders={
        "ENC-1": EncoderRecord("ENC-1", want=Want("one-in-one-out", 3), held=held),
        "ENC-2": EncoderRecord("ENC-2", want=Want("four-in-one-out", 1, "tenant-a"),
                               halted="denied", error={"code": "pool_exhausted"}),
    })
    ensure_dir(tmp_path)
    save_leases(tmp_path, state)
    back = load_leases(tmp_path)
    assert back.encoders["ENC-1"].held == held
    assert back.encoders["ENC-2"].want == Want("four-in-one-out", 1, "tenant-a")
    assert back.encoders["ENC-2"].halted == "denied"


def test_secrets_never_show_themselves() -> None:
    binding = _binding()
    assert "tnr_srv_SECRET" not in repr(binding)
    assert "tnr_srv_SECRET" not in str(binding.token)
    assert len(binding.token.fingerprint) == 8


@pytest.mark.parametrize("text", ["{not json", '{"format": 99}', '{"format": 1, "server": {"kind": "server"}}'])
def test_a_damaged_file_is_a_clear_error(tmp_path: Path, text: str) -> None:
    (tmp_path / "bindings.json").write_text(text)
    with pytest.raises(StateError, match=r"bindings\.json"):
        load_bindings(tmp_path)


def test_missing_files_mean_empty_state(tmp_path: Path) -> None:
    assert load_bindings(tmp_path).all() == []
    assert load_leases(tmp_path).encoders == {}
