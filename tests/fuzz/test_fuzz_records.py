"""Fuzzing the shim record decoders and the agent's per-connection path.

Whatever a peer sends, the Python decoder returns a record or raises RecordError with a known
reason; the native fast path gives the reference event or hands the message back; and the agent's
connection path (the intake's drain, on a real SOCK_SEQPACKET socket pair) turns every message
into one event or counts it as malformed, never anything else, with equal results on both paths.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from recordstrategies import datagrams, framed_records
from test_native_records import PROCESS, agree

from fuzz.connection import IntakeConnection
from fuzz.profiles import fuzz_settings, hang_guard
from telltale.nodeagent.convert import to_event
from telltale.nodeagent.intake import MAX_RECORD
from telltale.nodeagent.records import RecordError, decode
from telltale.v1 import common_pb2

try:
    from telltale._native import _records as native
except ImportError:  # not built: the native cases are skipped
    native = None  # type: ignore[assignment]
needs_native = pytest.mark.skipif(native is None, reason="telltale._native._records is not built")

REASONS = {
    "short",
    "too_long",
    "bad_magic",
    "bad_version",
    "unknown_kind",
    "length_mismatch",
    "field_overrun",
    "bad_field",
    "duplicate_field",
}


@fuzz_settings(short_examples=300, long_share=0.3)
@given(datagrams())
def test_the_python_decoder_decodes_or_rejects_with_a_reason(raw: bytes) -> None:
    """Any message decodes to a record that converts to an event, or is refused with a known reason."""
    with hang_guard():
        try:
            record = decode(raw)
        except RecordError as exc:
            why, message = exc.reason, str(exc)
        else:
            assert to_event(record, "w-fuzz", PROCESS).SerializeToString() is not None
            return
    assert why in REASONS
    assert message.startswith(why)


@needs_native
@fuzz_settings(short_examples=300)
@given(st.one_of(datagrams(), framed_records()), st.sampled_from([PROCESS, None]))
def test_the_native_fast_path_agrees_with_the_python_decoder(
    raw: bytes, process: common_pb2.ProcessInfo | None
) -> None:
    """Where the fast path encodes a message its event is the reference one; else it hands it back."""
    with hang_guard():
        agree(raw, "w-fuzz", process)


@fuzz_settings(short_examples=100, long_share=0.1)
@given(st.lists(datagrams(max_size=MAX_RECORD + 64), max_size=24))
def test_every_message_on_a_connection_is_one_event_or_one_malformed_count(messages: list[bytes]) -> None:
    """The agent's whole per-connection path: no message is lost uncounted, nothing is left behind,
    and both decoding paths deliver the same events and counts."""
    results = []
    for native_path in (False, True) if native is not None else (False,):
        agent = IntakeConnection(native_path=native_path)
        with hang_guard():
            agent.feed(messages)
        c = agent.counters
        assert c.records + c.malformed == len(messages), "every message is decoded or counted"
        assert len(agent.events) == c.records, "every decoded record is one event"
        assert (agent.workloads.by_id, agent.workloads.connections, agent.workloads.by_pid) == ({}, {}, {})
        results.append((agent.events, c.records, c.malformed, c.dropped))
    assert all(r == results[0] for r in results), "the native and Python paths agree"
