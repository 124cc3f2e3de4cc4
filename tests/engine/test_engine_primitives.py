"""The small pieces evaluation and validation rest on: timestamps, address ranges, globs, facts."""

from __future__ import annotations

import fnmatch

import pytest
from hypothesis import given
from hypothesis import strategies as st

from telltale.engine.checkbase import globs, path_or_name_globs
from telltale.engine.facts import ExecFacts, FileFacts, extract
from telltale.engine.netranges import AddressRanges, is_public
from telltale.engine.timefmt import format_rfc3339, parse_rfc3339
from telltale.v1 import common_pb2

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


# Glob matchers: the fast paths agree with the shell-style patterns they stand for.

_glob_chars = st.sampled_from(list("ab/.*?[]!-"))
_patterns = st.lists(st.text(_glob_chars, min_size=1, max_size=6), min_size=1, max_size=4)
_texts = st.text(st.sampled_from(list("ab/.-")), max_size=8)


@given(_patterns, _texts, st.booleans())
def test_glob_matcher_agrees_with_fnmatch(patterns: list[str], text: str, remember: bool) -> None:
    """A matcher answers exactly as fnmatch does for any of its patterns ('*' also matches '/')."""
    matcher = globs(patterns, remember=remember)
    assert matcher is not None
    assert matcher(text) == any(fnmatch.fnmatchcase(text, p) for p in patterns)


def test_glob_matcher_of_no_patterns_is_none() -> None:
    """No patterns, no matcher: callers skip the test altogether."""
    assert globs([]) is None


def test_program_globs_match_paths_or_names() -> None:
    """Patterns with a '/' match whole paths; the others match the last component."""
    matches = path_or_name_globs(["/srv/*", "python3*"])
    assert matches is not None
    assert matches("/srv/app/run")
    assert matches("/usr/bin/python3.11")
    assert not matches("/usr/bin/perl")


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (common_pb2.Event(kind=common_pb2.EVENT_KIND_PROCESS_START), None),
        (
            common_pb2.Event(
                kind=common_pb2.EVENT_KIND_PROCESS_START,
                process=common_pb2.ProcessInfo(exe="/x", forked=True),
            ),
            None,
        ),
        (
            common_pb2.Event(
                kind=common_pb2.EVENT_KIND_FILE_OPEN, file=common_pb2.FileDetail(path="/etc//ssh/../shadow")
            ),
            "/etc/shadow",
        ),
        (
            common_pb2.Event(
                kind=common_pb2.EVENT_KIND_EXEC, exec=common_pb2.ExecDetail(path="/usr/bin/python3")
            ),
            "python3",
        ),
    ],
)
def test_facts_are_read_once_per_kind(event: common_pb2.Event, expected: str | None) -> None:
    """Fork children have no facts; file paths are normalised; execs carry the program's name."""
    facts = extract(event)
    if expected is None:
        assert facts is None
    else:
        assert isinstance(facts, FileFacts | ExecFacts)
        assert expected in facts


def test_events_of_kinds_without_facts_reach_checks_as_they_are() -> None:
    """Rare kinds are handed to their checks as the event itself."""
    event = common_pb2.Event(kind=common_pb2.EVENT_KIND_CRYPTO)
    assert extract(event) is event


def test_public_addresses() -> None:
    """Only globally routable unicast addresses are public."""
    assert is_public("8.8.8.8")
    assert is_public("::ffff:8.8.8.8")
    assert not is_public("10.0.0.1")
    assert not is_public("100.64.0.1")
    assert not is_public("224.0.0.1")
    assert not is_public("not an address")
