"""Regression tests, one per problem the fuzzers found (see docs/hostile-input.md)."""

from __future__ import annotations

import os

import pytest
from recordkit import fld, rec

from fuzz.connection import IntakeConnection
from fuzz.test_fuzz_records import native
from telltale.engine.errors import PolicyValidationError
from telltale.engine.policy import parse_document
from telltale.nodeagent.records import HEADER_SIZE, MAX_RECORD_SIZE, FieldTag, RecordKind

_PATHS = [False, pytest.param(True, marks=pytest.mark.skipif(native is None, reason="not built"))]


@pytest.mark.parametrize("native_path", _PATHS, ids=["python", "native"])
def test_a_message_longer_than_a_record_is_counted_malformed_not_cut_to_fit(native_path: bool) -> None:
    """A 4096-byte valid record followed by more bytes in one message was read cut to 4096 bytes
    and accepted, its tail silently discarded; it is now refused as too long."""
    body = fld(FieldTag.ARGV, b"a" * (MAX_RECORD_SIZE - HEADER_SIZE - 4))
    valid = rec(body, kind=RecordKind.EXEC, pid=os.getpid())  # the peer's own record
    assert len(valid) == MAX_RECORD_SIZE
    agent = IntakeConnection(native_path=native_path)
    agent.feed([valid + b"hidden tail", valid])
    assert (agent.counters.malformed, agent.counters.records, len(agent.events)) == (1, 1, 1)


@pytest.mark.parametrize(
    "text", ["!!int", "!!int ''", "a: !!int", "spec: [!!int , !!float ]", "!!bool", "!!float"]
)
def test_an_explicit_scalar_tag_without_a_value_is_a_listed_problem(text: str) -> None:
    """`!!int` with no value made PyYAML's constructor raise IndexError, which escaped the parser."""
    with pytest.raises(PolicyValidationError) as info:
        parse_document(text)
    assert info.value.violations
