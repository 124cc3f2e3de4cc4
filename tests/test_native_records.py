"""The native fast path (telltale._native._records) agrees with the reference decoder and converter.

For every message, `encode` either gives the serialized Event that `convert.to_event(records.decode(m))`
builds (joined with `convert.event_prefix`), with the header's pid, ppid, dropped and seq; or hands the
message back unchanged, which it may only do for a process start, a message the reference decoder
rejects, a text field that is not strict UTF-8, or what is newer than the fast path (a kind above
MEMFD, an exec variant above posix_spawnp), which the reference path decodes.
"""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from recordstrategies import framed_records

from telltale.nodeagent.convert import event_prefix, to_event
from telltale.nodeagent.records import (
    HEADER_SIZE,
    MAGIC,
    VERSION,
    ExecVariant,
    FieldTag,
    RecordError,
    RecordKind,
    decode,
)
from telltale.v1 import agent_pb2, common_pb2

try:
    from telltale._native import _records as native
except ImportError:  # not built: the tests below are skipped
    native = None  # type: ignore[assignment]
pytestmark = pytest.mark.skipif(native is None, reason="telltale._native._records is not built")

HEADER = struct.Struct("<HBBHHIIIIQII")
T = FieldTag
PROCESS = common_pb2.ProcessInfo(
    pid=77, ppid=76, tid=78, exe="/usr/bin/app", argv=["app", "", "-x"], cwd="/srv", uid=1000, forked=True
)
TEXT_TAGS = {
    T.EXE,
    T.ARGV,
    T.CWD,
    T.PATH,
    T.WORKLOAD,
    T.NAME,
    T.ADDRESSES,
    T.FUNCTION,
    T.MEMFD_NAME,
    T.NEW_PATH,
    T.CALLER,
}


def fld(tag: int, body: bytes) -> bytes:
    return struct.pack("<HH", tag, len(body)) + body


def rec(
    kind: int,
    *fields: bytes,
    flags: int = 0,
    pid: int = 300,
    ppid: int = 200,
    tid: int = 301,
    count: int = 1,
    time_ns: int = 1_750_000_000_123_456_789,
    dropped: int = 0,
    seq: int = 2,
) -> bytes:
    body = b"".join(fields)
    return (
        HEADER.pack(
            MAGIC, VERSION, kind, HEADER_SIZE + len(body), flags, pid, ppid, tid, count, time_ns, dropped, seq
        )
        + body
    )


def sockaddr(family: int, rest: bytes) -> bytes:
    return struct.pack("<H", family) + rest


def inet(ip: str, port: int) -> bytes:
    return sockaddr(socket.AF_INET, struct.pack(">H", port) + socket.inet_aton(ip) + bytes(8))


def inet6(ip: str, port: int, scope: int = 0) -> bytes:
    return sockaddr(
        socket.AF_INET6,
        struct.pack(">HI", port, 0) + socket.inet_pton(socket.AF_INET6, ip) + struct.pack("<I", scope),
    )


def _has_non_utf8_text(raw: bytes) -> bool:
    """True when a text field of the (well-framed) message, or a unix SOCKADDR path, is not strict UTF-8."""
    off = HEADER_SIZE
    while off + 4 <= len(raw):
        tag, flen = struct.unpack_from("<HH", raw, off)
        body = raw[off + 4 : off + 4 + flen]
        off += 4 + flen
        if tag in TEXT_TAGS or (tag == T.SOCKADDR and body[:2] == struct.pack("<H", socket.AF_UNIX)):
            try:
                (body[2:] if tag == T.SOCKADDR else body).replace(b"\0", b"@").decode()
            except UnicodeDecodeError:
                return True
    return False


def agree(raw: bytes, workload_id: str = "w-1", process: common_pb2.ProcessInfo | None = PROCESS) -> bool:
    """Checks the contract of the module docstring for one message; True when the fast path encoded it."""
    assert native is not None
    item = native.encode(raw)
    try:
        record = decode(raw)
    except RecordError:
        assert item == raw, "a message the reference decoder rejects goes back to it"
        return False
    if isinstance(item, bytes):
        assert item == raw
        newer = record.kind > RecordKind.MEMFD or (record.variant or 0) > ExecVariant.POSIX_SPAWNP
        reason = record.kind == RecordKind.PROC_START or newer or _has_non_utf8_text(raw)
        assert reason, "handed back without reason"
        return False
    assert record.kind != RecordKind.PROC_START
    assert item[:4] == (record.pid, record.ppid, record.dropped, record.seq)
    expected = to_event(record, workload_id, process)
    got = common_pb2.Event.FromString(event_prefix(workload_id, process) + item[4])
    assert got == expected
    assert got.SerializeToString(deterministic=True) == expected.SerializeToString(deterministic=True)
    return True


EXAMPLES = {
    "connect-inet": rec(
        RecordKind.CONNECT,
        fld(T.RESULT, struct.pack("<ii", -1, 111)),
        fld(T.SOCKINFO, struct.pack("<3i", 2, 1, 6)),
        fld(T.SOCKADDR, inet("10.1.2.3", 443)),
    ),
    "connect-inet-short": rec(RecordKind.CONNECT, fld(T.SOCKADDR, sockaddr(socket.AF_INET, b"\x01\xbb"))),
    "connect-inet-any": rec(RecordKind.CONNECT, fld(T.SOCKADDR, inet("0.0.0.0", 0))),
    "connect-inet6-scoped": rec(RecordKind.CONNECT, fld(T.SOCKADDR, inet6("fe80::1", 53, scope=2))),
    "connect-inet6-unscoped": rec(RecordKind.CONNECT, fld(T.SOCKADDR, inet6("2001:db8::5", 8443))),
    "connect-inet6-mapped": rec(RecordKind.CONNECT, fld(T.SOCKADDR, inet6("::ffff:1.2.3.4", 1))),
    "connect-inet6-no-scope-id": rec(RecordKind.CONNECT, fld(T.SOCKADDR, inet6("::1", 9)[:24])),
    "connect-inet6-short": rec(RecordKind.CONNECT, fld(T.SOCKADDR, inet6("::1", 9)[:23])),
    "bind-unix": rec(RecordKind.BIND, fld(T.SOCKADDR, sockaddr(socket.AF_UNIX, b"/run/app.sock\0junk"))),
    "bind-unix-abstract": rec(RecordKind.BIND, fld(T.SOCKADDR, sockaddr(socket.AF_UNIX, b"\0name\0x"))),
    "bind-unix-unnamed": rec(RecordKind.BIND, fld(T.SOCKADDR, sockaddr(socket.AF_UNIX, b""))),
    "bind-unix-not-utf8": rec(RecordKind.BIND, fld(T.SOCKADDR, sockaddr(socket.AF_UNIX, b"/tmp/\xff\0"))),
    "bind-other-family": rec(RecordKind.BIND, fld(T.SOCKADDR, sockaddr(17, b"\x01\xab\xff"))),
    "bind-family-only": rec(RecordKind.BIND, fld(T.SOCKADDR, sockaddr(99, b""))),
    "listen": rec(
        RecordKind.LISTEN,
        fld(T.BACKLOG, struct.pack("<i", -5)),
        fld(T.SOCKINFO, struct.pack("<3i", -1, -1, -1)),
    ),
    "listen-zeros": rec(RecordKind.LISTEN, fld(T.BACKLOG, bytes(4)), fld(T.SOCKINFO, bytes(12))),
    "socket-raw": rec(
        RecordKind.SOCKET,
        fld(T.RESULT, struct.pack("<ii", 3, 0)),
        fld(T.SOCKINFO, struct.pack("<3i", 17, 3, 768)),
    ),
    "accept-header-only": rec(RecordKind.ACCEPT),
    "send": rec(
        RecordKind.SEND, fld(T.RESULT, struct.pack("<ii", 2**31 - 1, 0)), fld(T.SOCKADDR, inet("8.8.8.8", 53))
    ),
    "exec": rec(
        RecordKind.EXEC,
        fld(T.VARIANT, b"\x03"),
        fld(T.PATH, b"/bin/sh"),
        fld(T.ARGV, b"sh\0-c\0\0echo \xc3\xa9\0"),
    ),
    "exec-cut-argv": rec(RecordKind.EXEC, fld(T.ARGV, b"sh\0-c\0ech"), flags=2),
    "exec-empty-argv": rec(RecordKind.EXEC, fld(T.ARGV, b"")),
    "exec-nul-argv": rec(RecordKind.EXEC, fld(T.ARGV, b"\0\0")),
    "exec-header-only": rec(RecordKind.EXEC),
    "spawn": rec(
        RecordKind.EXEC,
        fld(T.VARIANT, b"\x0b"),
        fld(T.RESULT, struct.pack("<ii", 0, 0)),
        fld(T.CHILD_PID, struct.pack("<I", 4242)),
        fld(T.PATH, b"ls"),
    ),
    "exec-path-not-utf8": rec(RecordKind.EXEC, fld(T.PATH, b"/bin/\xed\xa0\x80")),
    "exec-argv-not-utf8": rec(RecordKind.EXEC, fld(T.ARGV, b"a\0\xc0\x80\0")),
    "resolve": rec(RecordKind.RESOLVE, fld(T.NAME, b"example.org"), fld(T.ADDRESSES, b"1.2.3.4\0::1\0")),
    "resolve-cut-list": rec(RecordKind.RESOLVE, fld(T.NAME, b"x"), fld(T.ADDRESSES, b"1.2.3.4\0::")),
    "resolve-empty-list": rec(
        RecordKind.RESOLVE, fld(T.RESULT, struct.pack("<ii", -2, 0)), fld(T.ADDRESSES, b"")
    ),
    "file-open-read": rec(
        RecordKind.FILE_OPEN,
        fld(T.FILE_FLAGS, struct.pack("<i", 0o2000000)),
        fld(T.FUNCTION, b"openat"),
        fld(T.PATH, b"/etc/shadow"),
        fld(T.RESULT, struct.pack("<ii", 3, 0)),
    ),
    "file-open-write": rec(
        RecordKind.FILE_OPEN,
        fld(T.FILE_FLAGS, struct.pack("<i", 1)),
        fld(T.FILE_MODE, struct.pack("<I", 0o644)),
    ),
    "file-open-append": rec(RecordKind.FILE_OPEN, fld(T.FILE_FLAGS, struct.pack("<i", 0o2000))),
    "file-open-negative-flags": rec(RecordKind.FILE_OPEN, fld(T.FILE_FLAGS, struct.pack("<i", -4))),
    "file-open-header-only": rec(RecordKind.FILE_OPEN),
    "file-rename": rec(
        RecordKind.FILE_CHANGE, fld(T.CHANGE, b"\x02"), fld(T.PATH, b"/etc/a"), fld(T.NEW_PATH, b"/etc/b")
    ),
    "file-chmod": rec(
        RecordKind.FILE_CHANGE, fld(T.CHANGE, b"\x01"), fld(T.FILE_MODE, struct.pack("<I", 0o4755))
    ),
    "file-change-header-only": rec(RecordKind.FILE_CHANGE),
    "setresuid": rec(
        RecordKind.CREDENTIALS,
        fld(T.FUNCTION, b"setresuid"),
        fld(T.IDS, struct.pack("<3q", 0, -1, 2**63 - 1)),
    ),
    "setgid": rec(
        RecordKind.CREDENTIALS, fld(T.FUNCTION, b"setgid"), fld(T.IDS, struct.pack("<q", -(2**63)))
    ),
    "setgroups": rec(
        RecordKind.CREDENTIALS,
        fld(T.FUNCTION, b"setgroups"),
        fld(T.GROUPS, struct.pack("<3I", 0, 4, 2**32 - 1)),
    ),
    "setgroups-empty": rec(RecordKind.CREDENTIALS, fld(T.FUNCTION, b"setgroups"), fld(T.GROUPS, b"")),
    "ids-without-function": rec(RecordKind.CREDENTIALS, fld(T.IDS, struct.pack("<q", 5))),
    "ids-of-another-call": rec(
        RecordKind.CREDENTIALS, fld(T.FUNCTION, b"capset"), fld(T.IDS, struct.pack("<q", 5))
    ),
    "credentials-header-only": rec(RecordKind.CREDENTIALS),
    "ptrace": rec(
        RecordKind.PTRACE, fld(T.REQUEST, struct.pack("<i", 16)), fld(T.TARGET_PID, struct.pack("<I", 1))
    ),
    "ptrace-header-only": rec(RecordKind.PTRACE),
    "prctl": rec(
        RecordKind.PRCTL, fld(T.OPTION, struct.pack("<i", 38)), fld(T.ARGUMENT, struct.pack("<Q", 2**64 - 1))
    ),
    "memfd": rec(RecordKind.MEMFD, fld(T.MEMFD_NAME, b"payload"), fld(T.MEMFD_FLAGS, struct.pack("<I", 1))),
    "memfd-header-only": rec(RecordKind.MEMFD),
    "unknown-tags-and-flags": rec(RecordKind.CONNECT, fld(99, b"x" * 10), fld(0, b""), flags=0xFFF0),
    "repeat-truncated": rec(RecordKind.CONNECT, flags=3, count=2**32 - 1),
    "zero-header": rec(RecordKind.BIND, pid=0, ppid=0, tid=0, count=0, time_ns=0, dropped=0, seq=0),
    "largest-header": rec(
        RecordKind.BIND,
        pid=2**32 - 1,
        ppid=2**32 - 1,
        tid=2**32 - 1,
        time_ns=2**64 - 1,
        dropped=2**32 - 1,
        seq=2**32 - 1,
    ),
    "irrelevant-fields": rec(RecordKind.PTRACE, fld(T.EXE, b"\xff"), fld(T.SOCKADDR, inet("1.1.1.1", 1))),
    "largest-record": rec(RecordKind.BIND, fld(T.SOCKADDR, sockaddr(40, b"\xee" * (4096 - 46)))),
}
HANDED_BACK = {
    "process-start": rec(RecordKind.PROC_START, fld(T.EXE, b"/bin/true")),
    "bind-unix-not-utf8": EXAMPLES["bind-unix-not-utf8"],
    "exec-path-not-utf8": EXAMPLES["exec-path-not-utf8"],
    "exec-argv-not-utf8": EXAMPLES["exec-argv-not-utf8"],
    "unknown-kind": rec(16),
    "short": rec(RecordKind.CONNECT)[:39],
    "too-long": rec(RecordKind.CONNECT, fld(T.PATH, b"x" * 4100)),
    "length-mismatch": rec(RecordKind.CONNECT) + b"\0",
    "stray-bytes": rec(RecordKind.CONNECT, b"\x05\x00"),
    "field-overrun": rec(RecordKind.CONNECT, fld(T.RESULT, bytes(8))[:-1]),
    "bad-size": rec(RecordKind.CONNECT, fld(T.RESULT, bytes(7))),
    "duplicate": rec(RecordKind.CONNECT, fld(99, b""), fld(T.BACKLOG, bytes(4)), fld(T.BACKLOG, bytes(4))),
    "bad-variant": rec(RecordKind.EXEC, fld(T.VARIANT, b"\x0c")),
    "bad-change": rec(RecordKind.FILE_CHANGE, fld(T.CHANGE, b"\x00")),
    "empty-address": rec(RecordKind.CONNECT, fld(T.ADDRESSES, b"a\0\0")),
    "short-sockaddr": rec(RecordKind.CONNECT, fld(T.SOCKADDR, b"\x02")),
    "long-name": rec(RecordKind.RESOLVE, fld(T.NAME, b"n" * 257)),
    "long-function": rec(RecordKind.CREDENTIALS, fld(T.FUNCTION, b"f" * 17)),
    "bad-ids": rec(RecordKind.CREDENTIALS, fld(T.IDS, bytes(12))),
    "too-many-groups": rec(RecordKind.CREDENTIALS, fld(T.GROUPS, bytes(260))),
    "long-memfd-name": rec(RecordKind.MEMFD, fld(T.MEMFD_NAME, b"m" * 257)),
}


@pytest.mark.parametrize("raw", EXAMPLES.values(), ids=EXAMPLES.keys())
@pytest.mark.parametrize(
    "process", [PROCESS, common_pb2.ProcessInfo(), None], ids=["process", "empty", "none"]
)
@pytest.mark.parametrize("workload_id", ["w-1", ""], ids=["workload", "unattributed"])
def test_the_fast_path_builds_the_reference_event(
    raw: bytes, process: common_pb2.ProcessInfo | None, workload_id: str
) -> None:
    """Every record kind but a process start, each field in its corner cases, gives to_event's Event."""
    assert agree(raw, workload_id, process) == (raw not in HANDED_BACK.values())


@pytest.mark.parametrize("raw", HANDED_BACK.values(), ids=HANDED_BACK.keys())
def test_what_the_fast_path_does_not_encode_goes_back_unchanged(raw: bytes) -> None:
    """Process starts, anything the reference decoder rejects, and text that is not strict UTF-8."""
    assert native is not None
    assert native.encode(raw) == raw


def test_the_fast_path_takes_any_buffer() -> None:
    raw = EXAMPLES["connect-inet"]
    assert native is not None
    assert native.encode(bytearray(raw)) == native.encode(memoryview(raw)) == native.encode(raw)


# ---- property-based: random and damaged records ------------------------------------------------


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(framed_records(), st.sampled_from([PROCESS, None]))
def test_fuzz_the_fast_path_agrees_with_the_reference(
    raw: bytes, process: common_pb2.ProcessInfo | None
) -> None:
    """Random, repeated, unknown and damaged fields: the same Event, or the message handed back, for a
    reason."""
    agree(raw, "w-fuzz", process)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_arbitrary_bytes(raw: bytes) -> None:
    agree(raw)


def test_joined_events_parse_as_one_batch_in_order() -> None:
    """join_events gives the EventBatch whose events are the given serialized events."""
    assert native is not None
    events = [
        common_pb2.Event(kind=common_pb2.EVENT_KIND_CONNECT, workload_id="w", count=n) for n in range(300)
    ]
    events.append(common_pb2.Event())  # serializes to nothing
    joined = native.join_events([e.SerializeToString() for e in events])
    assert list(agent_pb2.EventBatch.FromString(joined).events) == events
    assert native.join_events([]) == b""


def test_join_events_takes_only_a_list_of_bytes() -> None:
    assert native is not None
    with pytest.raises(TypeError):
        native.join_events([b"", "text"])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        native.join_events((b"",))  # type: ignore[arg-type]
