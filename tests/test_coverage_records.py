"""COVERAGE_GAP records (kind 20): decoding and conversion to Events."""

from __future__ import annotations

import struct

import pytest
import recordkit
from recordkit import fld

from telltale.nodeagent.convert import to_event
from telltale.nodeagent.records import ExecVariant, GapReason, RecordError, RecordKind, decode
from telltale.v1 import common_pb2


def gap_record(reasons: int, path: bytes = b"/usr/bin/foo", variant: int = 1) -> bytes:
    return recordkit.rec(
        fld(10, bytes([variant])),
        fld(50, struct.pack("<I", reasons)),
        fld(9, path),
        kind=20,
        pid=42,
        ppid=1,
        tid=42,
        time_ns=5_000_000_000,
        seq=3,
    )


def test_gap_record_is_decoded() -> None:
    """Kind 20 carries the program, the exec variant and the reasons as flags."""
    rec = decode(gap_record(0b000101, variant=11))
    assert rec.kind == RecordKind.COVERAGE_GAP
    assert rec.path == "/usr/bin/foo"
    assert rec.variant == ExecVariant.POSIX_SPAWNP
    assert rec.gap_reasons == GapReason.STATIC | GapReason.SETUID


def test_gap_reasons_of_the_wrong_size_are_refused() -> None:
    """GAP_REASONS is a u32."""
    bad = gap_record(1).replace(fld(50, struct.pack("<I", 1)), fld(50, b"\x01\x00"))
    bad = bad[:4] + struct.pack("<H", len(bad)) + bad[6:]
    with pytest.raises(RecordError) as err:
        decode(bad)
    assert err.value.reason == "bad_field"


def test_gap_record_becomes_a_coverage_gap_event() -> None:
    """Each known reason bit becomes a CoverageGapReason, in bit order; unknown bits are left out."""
    event = to_event(decode(gap_record(0b1100011 | 1 << 20)), "w-1", None)
    assert event.kind == common_pb2.EVENT_KIND_COVERAGE_GAP
    assert event.workload_id == "w-1"
    assert event.coverage_gap.path == "/usr/bin/foo"
    assert event.coverage_gap.variant == common_pb2.EXEC_VARIANT_EXECVE
    assert list(event.coverage_gap.reasons) == [
        common_pb2.COVERAGE_GAP_REASON_STATIC,
        common_pb2.COVERAGE_GAP_REASON_GO,
        common_pb2.COVERAGE_GAP_REASON_ENVIRONMENT_STRIPPED,
    ]
    assert event.process.pid == 42
