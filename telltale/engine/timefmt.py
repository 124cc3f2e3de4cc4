"""Timestamps as integer nanoseconds since the Unix epoch, and their RFC 3339 text form.

The engine never reads a clock: every time is an ``int`` of nanoseconds handed in by the caller.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

from google.protobuf import timestamp_pb2

_NS = 1_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)
# google.protobuf.Timestamp covers 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
_MIN_SECONDS = -62_135_596_800
_MAX_SECONDS = 253_402_300_799


def parse_rfc3339(text: str) -> int:
    """Parse an RFC 3339 timestamp with a time zone (``2027-01-01T00:00:00Z``) into nanoseconds.

    Fractions keep up to nanosecond precision. Raises ValueError on anything else, including a
    date without a time or a time without a zone.
    """
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError("expected an RFC 3339 timestamp with a time zone, e.g. 2027-01-01T00:00:00Z")
    year, month, day, hour, minute, second = (int(g) for g in match.group(1, 2, 3, 4, 5, 6))
    fraction, zulu, sign, off_h, off_m = match.group(7, 8, 9, 10, 11)
    if zulu:
        tz = UTC
    else:
        offset = timedelta(hours=int(off_h), minutes=int(off_m))
        if offset >= timedelta(hours=24):
            raise ValueError("time zone offset out of range")
        tz = timezone(-offset if sign == "-" else offset)
    if second == 60:  # a leap second is valid RFC 3339; treat it as the next second's start
        second = 59
        leap = 1
    else:
        leap = 0
    moment = datetime(year, month, day, hour, minute, second, tzinfo=tz)  # raises on a bad date
    delta = moment - _EPOCH
    seconds = delta.days * 86_400 + delta.seconds + leap
    if not _MIN_SECONDS <= seconds <= _MAX_SECONDS:
        raise ValueError("timestamp out of range")
    nanos = int(fraction.ljust(9, "0")) if fraction else 0
    return seconds * _NS + nanos


def format_rfc3339(ns: int) -> str:
    """Format nanoseconds since the epoch as RFC 3339 in UTC, with only the fraction digits needed."""
    seconds, nanos = divmod(ns, _NS)
    m = _EPOCH + timedelta(seconds=seconds)
    text = f"{m.year:04d}-{m.month:02d}-{m.day:02d}T{m.hour:02d}:{m.minute:02d}:{m.second:02d}"
    if nanos:
        text += "." + f"{nanos:09d}".rstrip("0")
    return text + "Z"


def to_timestamp(ns: int) -> timestamp_pb2.Timestamp:
    """Convert nanoseconds since the epoch to a Timestamp message."""
    seconds, nanos = divmod(ns, _NS)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


def from_timestamp(ts: timestamp_pb2.Timestamp) -> int:
    """Convert a Timestamp message to nanoseconds since the epoch."""
    return ts.seconds * _NS + ts.nanos


def timestamp_problem(ts: timestamp_pb2.Timestamp) -> str | None:
    """Say what makes a Timestamp message invalid, or return None when it is valid."""
    if not 0 <= ts.nanos < _NS:
        return f"nanos {ts.nanos} out of range (0-999999999)"
    if not _MIN_SECONDS <= ts.seconds <= _MAX_SECONDS:
        return f"seconds {ts.seconds} out of range (years 1-9999)"
    return None
