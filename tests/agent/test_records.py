"""The leases file: each encoder's wish and lease, read back as written and resumed safely."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from agent.records import EncoderRecord, Held, LeaseState, Want, load_leases, save_leases
from agent.statedir import ensure_dir
from shared.secret import Secret


def _held(**changes: Any) -> Held:
    fields: dict[str, Any] = dict(
        lease_id="lse_1",
        token=Secret("a.b.c"),
        licence_type="one-in-one-out",
        count=3,
        domain=None,
        server_id="srv_1",
        expires_at=2100,
        renew_after=1900,
        server_time=1800,
        deadline=7298.0,
        renew_at=7105.0,
        wall_deadline=2098.0,
        boot_id="boot-1",
        purchase_state="valid",
        seats=({"purchase_id": "pur_1", "count": 3},),
    )
    fields.update(changes)
    return Held(**fields)


def test_leases_round_trip(tmp_path: Path) -> None:
    held = _held()
    state = LeaseState(
        encoders={
            "ENC-1": EncoderRecord("ENC-1", want=Want("one-in-one-out", 3), held=held),
            "ENC-2": EncoderRecord(
                "ENC-2", want=Want("four-in-one-out", 1, "tenant-a"), halted="denied", error={"code": "pool_exhausted"}
            ),
        }
    )
    ensure_dir(tmp_path)
    save_leases(tmp_path, state)
    back = load_leases(tmp_path)
    # The deadlines are read back as stored; ``resumed`` decides what they are worth.
    stored = back.encoders["ENC-1"].held
    assert stored == dataclasses.replace(held, renew_at=float("-inf"))
    raw = json.loads((tmp_path / "leases.json").read_text())["encoders"]["ENC-1"]["held"]
    assert (raw["deadline"], raw["renew_at"]) == (2098.0, 1905.0)  # wall clock
    assert (raw["monotonic_deadline"], raw["boot_id"]) == (7298.0, "boot-1")
    assert back.encoders["ENC-2"].want == Want("four-in-one-out", 1, "tenant-a")
    assert back.encoders["ENC-2"].halted == "denied"


def test_no_leases_file_means_no_records(tmp_path: Path) -> None:
    assert load_leases(tmp_path).encoders == {}


def test_a_lease_resumed_on_the_same_boot_keeps_its_monotonic_deadline() -> None:
    stored = _held(renew_at=float("-inf"))
    # Whatever the wall clock says (stepped an hour either way), renewed at once.
    for wall in (1840.0, 1840.0 - 3600, 1840.0 + 3600):
        again = stored.resumed(monotonic=7140.0, wall=wall, boot_id="boot-1")
        assert (again.deadline, again.renew_at) == (7298.0, 7140.0)
    late = stored.resumed(monotonic=7400.0, wall=1840.0, boot_id="boot-1")
    assert late.deadline == 7298.0 and late.renew_at == 7400.0  # past: lost at once


def test_a_lease_resumed_after_a_reboot_trusts_the_wall_clock_only_as_an_upper_bound() -> None:
    stored = _held(renew_at=float("-inf"))
    # 40 s of the host's wall clock later: 258 s left of 298, renewed at once.
    later = stored.resumed(monotonic=50.0, wall=1840.0, boot_id="boot-2")
    assert (later.deadline, later.renew_at, later.boot_id) == (308.0, 50.0, "boot-2")
    # The host's clock went back an hour meanwhile: never more than the lease's whole
    # lifetime (300 s on the broker's clock).
    back = stored.resumed(monotonic=50.0, wall=1800.0 - 3600, boot_id="boot-2")
    assert (back.deadline, back.renew_at) == (350.0, 50.0)
    # It went forward past the deadline: nothing left, not a negative time.
    ahead = stored.resumed(monotonic=50.0, wall=1800.0 + 3600, boot_id="boot-2")
    assert (ahead.deadline, ahead.renew_at) == (50.0, 50.0)
    # A clock whose origin is unknown is never trusted across processes.
    unknown = _held(boot_id="").resumed(monotonic=7140.0, wall=1840.0, boot_id="")
    assert unknown.deadline == 7140.0 + 258.0


def test_a_lease_stored_without_server_time_is_bounded_by_renew_after(tmp_path: Path) -> None:
    held = _held()
    state = LeaseState(encoders={"ENC-1": EncoderRecord("ENC-1", want=Want("one-in-one-out", 3), held=held)})
    ensure_dir(tmp_path)
    save_leases(tmp_path, state)
    path = tmp_path / "leases.json"
    document = json.loads(path.read_text())
    for added in ("server_time", "monotonic_deadline", "boot_id"):  # as an older agent wrote it
        del document["encoders"]["ENC-1"]["held"][added]
    path.write_text(json.dumps(document))
    stored = load_leases(tmp_path).encoders["ENC-1"].held
    assert stored is not None and stored.lifetime == 200  # expires_at - renew_after
    assert stored.resumed(monotonic=0.0, wall=0.0, boot_id="boot-1").deadline == 200.0
