"""Counts in words, as every message of the broker, agent and console writes them."""

from __future__ import annotations

import pytest

from shared.durations import about
from shared.words import count


@pytest.mark.parametrize(
    ("n", "noun", "plural", "said"),
    [
        (0, "lease", None, "0 leases"),
        (1, "lease", None, "1 lease"),
        (2, "unused licence", None, "2 unused licences"),
        (1, "server or domain", "servers or domains", "1 server or domain"),
        (3, "server or domain", "servers or domains", "3 servers or domains"),
    ],
)
def test_count_says_one_thing_or_many(n: int, noun: str, plural: str | None, said: str) -> None:
    assert count(n, noun, plural) == said


def test_durations_count_their_units_the_same_way() -> None:
    assert about(1) == "about 1 second"
    assert about(60) == "about 1 minute"
    assert about(894) == "about 15 minutes"
