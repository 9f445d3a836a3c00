"""Row ids: opaque, unique, and in the order they were made."""

from __future__ import annotations

import re
import time

from broker.ids import new_id


def test_ids_made_one_after_another_sort_in_the_order_made() -> None:
    # What keeps a new lease's key beside the last one's in every index keyed on it.
    made = []
    for _ in range(20):
        made.append(new_id("lse"))
        time.sleep(0.002)
    assert made == sorted(made)


def test_ids_differ_in_their_random_part_alone() -> None:
    ids = [new_id("lse") for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for value in ids:
        assert re.fullmatch(r"lse_[0-9a-f]{28}", value)
    # 64 random bits after the 48-bit millisecond: ids of one millisecond still differ there.
    assert len({value[-16:] for value in ids}) == len(ids)
    now_ms = time.time_ns() // 1_000_000
    assert abs(int(ids[-1][4:16], 16) - now_ms) < 60_000
