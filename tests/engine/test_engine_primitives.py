"""The small pieces evaluation and validation rest on: timestamps and address ranges."""

from __future__ import annotations

import pytest

from telltale.engine.netranges import AddressRanges
from telltale.engine.timefmt import format_rfc3339, parse_rfc3339

NS = 1_000_000_000


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("1970-01-01T00:00:00Z", 0),
        ("2027-01-01T00:00:00Z", 1_798_761_600 * NS),
        ("2027-01-01T01:00:00+01:00", 1_798_761_600 * NS),
        ("2026-12-31T19:30:00-04:30", 1_798_761_600 * NS),
        ("2027-01-01t00:00:00.000000001z", 1_798_761_600 * NS + 1),
        ("2027-01-01 00:00:00.5Z", 1_798_761_600 * NS + NS // 2),
        ("0001-01-01T00:00:00Z", -62_135_596_800 * NS),
    ],
)
def test_rfc3339_parses_to_nanoseconds(text: str, ns: int) -> None:
    """RFC 3339 timestamps with any zone parse to exact nanoseconds since the epoch."""
    assert parse_rfc3339(text) == ns


@pytest.mark.parametrize(
    "text",
    [
        "2027-01-01",
        "2027-01-01T00:00:00",
        "2027-13-01T00:00:00Z",
        "2027-01-01T00:00:00.0000000001Z",
        "soon",
        "",
    ],
)
def test_rfc3339_rejects_incomplete_or_invalid_times(text: str) -> None:
    """Dates without time or zone, impossible dates and excess precision are refused."""
    with pytest.raises(ValueError, match=r"."):
        parse_rfc3339(text)


@pytest.mark.parametrize(
    "ns", [0, 1, 1_798_761_600 * NS + 120_000_000, -62_135_596_800 * NS, 253_402_300_799 * NS]
)
def test_rfc3339_format_round_trips(ns: int) -> None:
    """Formatting in UTC and parsing back gives the same nanoseconds."""
    assert parse_rfc3339(format_rfc3339(ns)) == ns


def test_rfc3339_format_is_minimal_utc() -> None:
    """Formatting writes UTC with 'Z' and only the fraction digits needed."""
    assert format_rfc3339(1_798_761_600 * NS + 120_000_000) == "2027-01-01T00:00:00.12Z"
    assert format_rfc3339(0) == "1970-01-01T00:00:00Z"


def test_address_ranges_merge_overlaps_and_respect_boundaries() -> None:
    """Overlapping and adjacent networks merge; the first and last address are inside, neighbours not."""
    ranges = AddressRanges(["10.0.0.0/24", "10.0.0.128/25", "10.0.1.0/24", "192.0.2.7", "2001:db8::/127"])
    inside = ["10.0.0.0", "10.0.1.255", "192.0.2.7", "2001:db8::1", "::ffff:10.0.0.9"]
    outside = ["9.255.255.255", "10.0.2.0", "192.0.2.6", "192.0.2.8", "2001:db8::2", "::a00:1", "x", ""]
    assert [a in ranges for a in inside] == [True] * len(inside)
    assert [a in ranges for a in outside] == [False] * len(outside)
    assert ranges
    assert not AddressRanges([])
