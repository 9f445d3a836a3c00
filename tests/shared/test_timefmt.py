"""parse_ts reads RFC 3339 date-times only; format_ts writes the API's one form."""

from __future__ import annotations

import pytest

from shared.timefmt import format_ts, parse_ts

T = 1_801_353_600  # 2027-01-31T00:00:00Z


@pytest.mark.parametrize(
    "text",
    [
        "2027-01-31T00:00:00Z",  # what the API writes
        "2027-01-31t00:00:00z",  # RFC 3339 allows lowercase T and Z
        "2027-01-31T00:00:00.999Z",  # fractions are dropped, as format_ts drops them
        "2027-01-31T01:00:00+01:00",  # the same instant with an offset
        "2027-01-30T19:30:00-04:30",
        "2027-01-31T00:00:00-00:00",  # "offset unknown": UTC
    ],
)
def test_rfc3339_forms_are_read_as_the_same_instant(text: str) -> None:
    assert parse_ts(text) == T


@pytest.mark.parametrize(
    "text",
    [
        "2027-W05-1T00:00:00Z",  # ISO 8601 week date (fromisoformat took it)
        "2027-031T00:00:00Z",  # ordinal date
        "20270131T000000Z",  # basic format
        "2027-01-31 00:00:00Z",  # a space for the T
        "2027-01-31T00:00:00+0100",  # offset without its colon
        "2027-01-31T00:00Z",  # no seconds
        "2027-01-31",  # a date alone
        "2027-01-31T00:00:00",  # no zone
        " 2027-01-31T00:00:00Z",  # surrounding whitespace
        "2027-01-31T00:00:00Z\n",  # a trailing newline
        "٢٠٢٧-01-31T00:00:00Z",  # Arabic-Indic digits
        "2027-02-30T00:00:00Z",  # no such day
        "2027-01-31T24:00:00Z",
        "2027-01-31T23:59:60Z",  # a leap second: no instant in epoch seconds
        "2027-01-31T00:00:00+24:00",
        "2027-01-31T00:00:00+01:60",
        "",
    ],
)
def test_anything_else_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_ts(text)


def test_format_and_parse_round_trip() -> None:
    assert format_ts(T) == "2027-01-31T00:00:00Z"
    assert parse_ts(format_ts(T + 0.7)) == T
