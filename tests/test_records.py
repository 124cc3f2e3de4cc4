"""The decoder of the shim's record format, on records built by hand (independently of the shim)."""

from __future__ import annotations

import array
import dataclasses
import struct
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from recordkit import fld, reason, rec, sockaddr_in, sockaddr_in6
from recordstrategies import valid_records

from telltale.nodeagent.records import (
    HEADER_SIZE,
    MAX_RECORD_SIZE,
    ExecVariant,
    FieldTag,
    FileChange,
    Record,
    RecordError,
    RecordFlag,
    RecordKind,
    SockAddr,
    decode,
)

# ---- valid records ----------------------------------------------------------------------------


def test_header_only_record_decodes() -> None:
    """Every header field comes back as written; absent fields are None."""
    r = decode(
        rec(
            kind=RecordKind.BIND,
            flags=0b1010,
            pid=7,
            ppid=6,
            tid=8,
            count=9,
            time_ns=2**64 - 1,
            dropped=3,
            seq=2**32 - 1,
        )
    )
    assert r == Record(
        kind=RecordKind.BIND,
        flags=RecordFlag.TRUNCATED | RecordFlag.NODEDUP,
        pid=7,
        ppid=6,
        tid=8,
        count=9,
        time_ns=2**64 - 1,
        dropped=3,
        seq=2**32 - 1,
    )
    assert isinstance(r.kind, RecordKind)
    assert isinstance(r.flags, RecordFlag)


@pytest.mark.parametrize("kind", list(RecordKind))
def test_every_kind_is_accepted(kind: RecordKind) -> None:
    """Kinds 1 to 9 and 12 to 15 are the v1 kinds."""
    assert decode(rec(kind=kind)).kind is kind


def test_process_start_fields() -> None:
    """EXE, ARGV, CWD, CREDS and WORKLOAD decode to text, a tuple of arguments and six ints."""
    r = decode(
        rec(
            fld(FieldTag.CREDS, struct.pack("<6I", 1000, 0, 0, 1000, 1000, 2**32 - 1)),
            fld(FieldTag.WORKLOAD, b"app=shop;env=prod"),
            fld(FieldTag.EXE, b"/usr/bin/python3.11"),
            fld(FieldTag.CWD, b"/srv/app"),
            fld(FieldTag.ARGV, b"python3\0-m\0\0app\0"),
            kind=RecordKind.PROC_START,
        )
    )
    assert (r.exe, r.cwd, r.workload) == ("/usr/bin/python3.11", "/srv/app", "app=shop;env=prod")
    assert r.argv == ("python3", "-m", "", "app")
    assert r.creds == (1000, 0, 0, 1000, 1000, 2**32 - 1)


@pytest.mark.parametrize(
    ("body", "argv"),
    [
        (b"", ()),
        (b"\0", ("",)),
        (b"a\0b\0", ("a", "b")),
        (b"a\0bc", ("a", "bc")),  # the last argument was cut: no terminator
        (b"a\0\0", ("a", "")),
    ],
)
def test_argv_splitting(body: bytes, argv: tuple[str, ...]) -> None:
    """Each argument is NUL-terminated; a cut last argument has no terminator."""
    assert decode(rec(fld(FieldTag.ARGV, body), kind=RecordKind.EXEC)).argv == argv


def test_bytes_that_are_not_utf8_are_escaped() -> None:
    """Invalid UTF-8 comes back backslash-escaped, never as an error or a surrogate."""
    r = decode(
        rec(
            fld(FieldTag.PATH, b"/tmp/\xff\xfe"),
            fld(FieldTag.ARGV, b"caf\xc3\xa9\0\x80\0"),
            kind=RecordKind.EXEC,
        )
    )
    assert r.path == "/tmp/\\xff\\xfe"
    assert r.argv == ("café", "\\x80")
    assert r.path.isprintable()


def test_exec_and_spawn_fields() -> None:
    """VARIANT, PATH, RESULT and CHILD_PID of a posix_spawn record."""
    r = decode(
        rec(
            fld(FieldTag.VARIANT, bytes([ExecVariant.POSIX_SPAWNP])),
            fld(FieldTag.RESULT, struct.pack("<ii", 0, 0)),
            fld(FieldTag.CHILD_PID, struct.pack("<I", 4242)),
            fld(FieldTag.PATH, b"true"),
            fld(FieldTag.ARGV, b"true\0x\0"),
            kind=RecordKind.EXEC,
        )
    )
    assert (r.variant, r.path, r.result, r.child_pid, r.argv) == (
        ExecVariant.POSIX_SPAWNP,
        "true",
        (0, 0),
        4242,
        ("true", "x"),
    )


def test_network_fields() -> None:
    """SOCKADDR, RESULT (negative values), SOCKINFO and BACKLOG of a listen record."""
    r = decode(
        rec(
            fld(FieldTag.RESULT, struct.pack("<ii", -1, 98)),
            fld(FieldTag.SOCKINFO, struct.pack("<iii", 2, 1, 6)),
            fld(FieldTag.BACKLOG, struct.pack("<i", -1)),
            fld(FieldTag.SOCKADDR, sockaddr_in("0.0.0.0", 8080)),
            kind=RecordKind.LISTEN,
        )
    )
    assert r.result == (-1, 98)
    assert r.sockinfo == (2, 1, 6)
    assert r.backlog == -1
    assert r.sockaddr == SockAddr("inet", "0.0.0.0", 8080, sockaddr_in("0.0.0.0", 8080))


def test_resolve_fields() -> None:
    """NAME is text; ADDRESSES is a tuple of the NUL-terminated addresses."""
    r = decode(
        rec(
            fld(FieldTag.RESULT, struct.pack("<ii", 0, 0)),
            fld(FieldTag.NAME, b"db.internal"),
            fld(FieldTag.ADDRESSES, b"10.0.0.7\0fd00::7\0"),
            kind=RecordKind.RESOLVE,
        )
    )
    assert (r.kind, r.result, r.name, r.addresses) == (
        RecordKind.RESOLVE,
        (0, 0),
        "db.internal",
        ("10.0.0.7", "fd00::7"),
    )


@pytest.mark.parametrize(
    ("body", "addresses"),
    [
        (b"", ()),
        (b"::1\0", ("::1",)),
        (b"10.0.0.1\x0010.0", ("10.0.0.1", "10.0")),  # a REPEAT copy cut in the last address
        (b"\xff\0", ("\\xff",)),
    ],
)
def test_addresses_splitting(body: bytes, addresses: tuple[str, ...]) -> None:
    assert decode(rec(fld(FieldTag.ADDRESSES, body), kind=RecordKind.RESOLVE)).addresses == addresses


def test_credentials_fields() -> None:
    """FUNCTION is text, IDS one to three signed 64-bit ids, GROUPS a list of u32."""
    r = decode(
        rec(
            fld(FieldTag.RESULT, struct.pack("<ii", 0, 0)),
            fld(FieldTag.FUNCTION, b"setresuid"),
            fld(FieldTag.IDS, struct.pack("<3q", -1, 0, 2**32 - 2)),
            kind=RecordKind.CREDENTIALS,
        )
    )
    assert (r.kind, r.result, r.function, r.ids, r.groups) == (
        RecordKind.CREDENTIALS,
        (0, 0),
        "setresuid",
        (-1, 0, 2**32 - 2),
        None,
    )
    assert decode(rec(fld(FieldTag.IDS, struct.pack("<q", 5)), kind=RecordKind.CREDENTIALS)).ids == (5,)
    groups = decode(
        rec(fld(FieldTag.FUNCTION, b"setgroups"), fld(FieldTag.GROUPS, struct.pack("<3I", 0, 10, 2**32 - 1)))
    )
    assert (groups.function, groups.ids, groups.groups) == ("setgroups", None, (0, 10, 2**32 - 1))
    assert decode(rec(fld(FieldTag.GROUPS, b""))).groups == ()
    assert decode(rec(fld(FieldTag.GROUPS, b"\0" * 256))).groups == (0,) * 64


def test_ptrace_prctl_and_memfd_fields() -> None:
    p = decode(
        rec(
            fld(FieldTag.REQUEST, struct.pack("<i", 3)),
            fld(FieldTag.TARGET_PID, struct.pack("<I", 2**32 - 1)),
            kind=RecordKind.PTRACE,
        )
    )
    assert (p.kind, p.request, p.target_pid) == (RecordKind.PTRACE, 3, 2**32 - 1)
    c = decode(
        rec(
            fld(FieldTag.OPTION, struct.pack("<i", -4)),
            fld(FieldTag.ARGUMENT, struct.pack("<Q", 2**64 - 1)),
            kind=RecordKind.PRCTL,
        )
    )
    assert (c.kind, c.option, c.argument) == (RecordKind.PRCTL, -4, 2**64 - 1)
    m = decode(
        rec(
            fld(FieldTag.MEMFD_NAME, b"m" * 256),
            fld(FieldTag.MEMFD_FLAGS, struct.pack("<I", 1)),
            kind=RecordKind.MEMFD,
        )
    )
    assert (m.kind, m.memfd_name, m.memfd_flags) == (RecordKind.MEMFD, "m" * 256, 1)


def test_file_open_and_change_fields() -> None:
    o = decode(
        rec(
            fld(FieldTag.PATH, b"/etc/shadow"),
            fld(FieldTag.FILE_FLAGS, struct.pack("<i", -1)),
            fld(FieldTag.FILE_MODE, struct.pack("<I", 0o644)),
            fld(FieldTag.FUNCTION, b"openat64"),
            kind=RecordKind.FILE_OPEN,
        )
    )
    assert (o.kind, o.path, o.file_flags, o.file_mode, o.function) == (
        RecordKind.FILE_OPEN,
        "/etc/shadow",
        -1,
        0o644,
        "openat64",
    )
    c = decode(
        rec(
            fld(FieldTag.CHANGE, b"\x02"),
            fld(FieldTag.PATH, b"/tmp/x"),
            fld(FieldTag.NEW_PATH, b"/usr/bin/x"),
            kind=RecordKind.FILE_CHANGE,
        )
    )
    assert (c.kind, c.change, c.path, c.new_path, c.file_mode) == (
        RecordKind.FILE_CHANGE,
        FileChange.RENAME,
        "/tmp/x",
        "/usr/bin/x",
        None,
    )
    assert decode(rec(fld(FieldTag.CHANGE, b"\x01"), kind=RecordKind.FILE_CHANGE)).change == FileChange.CHMOD
    assert decode(rec(fld(FieldTag.CHANGE, b"\x03"), kind=RecordKind.FILE_CHANGE)).change == FileChange.UNLINK


def test_longest_name_and_address_list_are_accepted() -> None:
    """NAME up to 256 bytes and ADDRESSES up to 1024 bytes, as the shim caps them."""
    addresses = b"1.2.3.4\0" * 128
    r = decode(
        rec(fld(FieldTag.NAME, b"n" * 256), fld(FieldTag.ADDRESSES, addresses), kind=RecordKind.RESOLVE)
    )
    assert r.name == "n" * 256
    assert r.addresses == ("1.2.3.4",) * 128


@pytest.mark.parametrize("kind", [RecordKind.SOCKET, RecordKind.ACCEPT, RecordKind.SEND])
def test_socket_accept_and_send_carry_network_fields(kind: RecordKind) -> None:
    r = decode(
        rec(
            fld(FieldTag.SOCKINFO, struct.pack("<iii", 2, 2, 17)),
            fld(FieldTag.SOCKADDR, sockaddr_in("127.0.0.1", 53)),
            kind=kind,
        )
    )
    assert (r.kind, r.sockinfo, r.sockaddr) == (
        kind,
        (2, 2, 17),
        SockAddr("inet", "127.0.0.1", 53, sockaddr_in("127.0.0.1", 53)),
    )


@pytest.mark.parametrize(
    ("raw", "family", "address", "port"),
    [
        (sockaddr_in("127.0.0.1", 443), "inet", "127.0.0.1", 443),
        (sockaddr_in("10.1.2.3", 0)[:8], "inet", "10.1.2.3", 0),  # no padding
        (sockaddr_in("10.1.2.3", 80)[:7], "inet", "", None),  # too short for an address
        (sockaddr_in6("::1", 8443), "inet6", "::1", 8443),
        (sockaddr_in6("fe80::1", 53, scope=3), "inet6", "fe80::1%3", 53),
        (sockaddr_in6("2001:db8::5", 1)[:24], "inet6", "2001:db8::5", 1),  # no scope id
        (sockaddr_in6("::1", 1)[:20], "inet6", "", None),
        (struct.pack("<H", 1) + b"/run/agent.sock\0", "unix", "/run/agent.sock", None),
        (struct.pack("<H", 1) + b"/run/a\0garbage", "unix", "/run/a", None),
        (struct.pack("<H", 1) + b"\0name\0x", "unix", "@name@x", None),  # abstract: length-delimited
        (struct.pack("<H", 1), "unix", "", None),  # unnamed
        (struct.pack("<H", 16) + b"\x01\x02", "other:16", "0102", None),
        (struct.pack("<H", 0), "other:0", "", None),
    ],
)
def test_sockaddr_families(raw: bytes, family: str, address: str, port: int | None) -> None:
    """inet, inet6 and unix addresses are decoded; others keep their bytes in hex."""
    r = decode(rec(fld(FieldTag.SOCKADDR, raw)))
    assert r.sockaddr == SockAddr(family, address, port, raw)


def test_unknown_tags_are_skipped_and_unknown_flags_kept() -> None:
    """Fields from a newer shim are skipped, and unknown flag bits survive."""
    r = decode(
        rec(
            fld(0, b"zero"),
            fld(13, b"\x01" * 40),
            fld(FieldTag.BACKLOG, struct.pack("<i", 5)),
            fld(0xFFFF, b""),
            kind=RecordKind.LISTEN,
            flags=0x8001,
        )
    )
    assert r.backlog == 5
    assert r.flags == RecordFlag.REPEAT | 0x8000
    assert int(r.flags) == 0x8001


def test_buffer_types() -> None:
    """bytes, bytearray and memoryviews (of another item format, or not contiguous) are accepted."""
    raw = rec(fld(FieldTag.PATH, b"/bin/true"), fld(FieldTag.VARIANT, b"\x01"), kind=RecordKind.EXEC)
    expected = decode(raw)
    assert decode(bytearray(raw)) == expected
    assert decode(memoryview(raw)) == expected
    assert decode(memoryview(b"junk" + raw)[4:]) == expected
    assert decode(memoryview(array.array("H", raw))) == expected  # len(raw) is even
    interleaved = bytes(x for b in raw for x in (b, 0xEE))
    assert decode(memoryview(interleaved)[::2]) == expected  # not contiguous


def test_decoded_records_are_ordinary_frozen_records() -> None:
    """A decoded Record is immutable, hashable, and equal to one constructed directly."""
    raw = rec(
        fld(FieldTag.RESULT, struct.pack("<ii", -1, 111)), fld(FieldTag.SOCKADDR, sockaddr_in("10.0.0.1", 80))
    )
    r = decode(raw)
    assert type(r) is Record
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.pid = 5  # type: ignore[misc]
    direct = Record(
        kind=RecordKind.CONNECT,
        flags=RecordFlag(0),
        pid=100,
        ppid=1,
        tid=101,
        count=1,
        time_ns=1_700_000_000_000_000_000,
        dropped=0,
        seq=1,
        result=(-1, 111),
        sockaddr=SockAddr("inet", "10.0.0.1", 80, sockaddr_in("10.0.0.1", 80)),
    )
    assert r == direct
    assert hash(r) == hash(direct)
    assert {r: 1}[direct] == 1
    assert dataclasses.replace(r, count=7).count == 7
    assert dataclasses.astuple(r) == dataclasses.astuple(direct)
    assert repr(r) == repr(direct)


def test_maximum_size_record() -> None:
    """A record of exactly 4096 bytes is valid."""
    raw = rec(fld(FieldTag.ARGV, b"a" * (MAX_RECORD_SIZE - HEADER_SIZE - 4)), kind=RecordKind.EXEC)
    assert len(raw) == MAX_RECORD_SIZE
    assert decode(raw).argv == ("a" * (MAX_RECORD_SIZE - HEADER_SIZE - 4),)


# ---- invalid records --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"", "short"),
        (rec()[: HEADER_SIZE - 1], "short"),
        (rec(fld(FieldTag.ARGV, b"a" * (MAX_RECORD_SIZE - HEADER_SIZE - 3))), "too_long"),
        (rec(magic=0x5455), "bad_magic"),
        (rec(magic=0x0000), "bad_magic"),
        (rec(version=0), "bad_version"),
        (rec(version=2), "bad_version"),
        (rec(kind=0), "unknown_kind"),
        (rec(kind=99), "unknown_kind"),
        (rec(kind=255), "unknown_kind"),
        (rec(length=HEADER_SIZE + 1), "length_mismatch"),
        (rec(fld(FieldTag.BACKLOG, b"\0" * 4), length=HEADER_SIZE), "length_mismatch"),
        (rec(length=0), "length_mismatch"),
        (rec(b"\x01"), "field_overrun"),
        (rec(b"\x01\x00\x05"), "field_overrun"),
        (rec(struct.pack("<HH", FieldTag.EXE, 5) + b"abcd"), "field_overrun"),
        (rec(struct.pack("<HH", 99, 1)), "field_overrun"),  # unknown tags are bounds-checked too
        (rec(fld(FieldTag.BACKLOG, b"\0" * 4) + b"\0\0"), "field_overrun"),
        (rec(fld(FieldTag.CREDS, b"\0" * 20)), "bad_field"),
        (rec(fld(FieldTag.RESULT, b"\0" * 4)), "bad_field"),
        (rec(fld(FieldTag.SOCKINFO, b"\0" * 16)), "bad_field"),
        (rec(fld(FieldTag.BACKLOG, b"\0" * 2)), "bad_field"),
        (rec(fld(FieldTag.VARIANT, b"")), "bad_field"),
        (rec(fld(FieldTag.VARIANT, b"\x01\x00")), "bad_field"),
        (rec(fld(FieldTag.VARIANT, b"\x00")), "bad_field"),
        (rec(fld(FieldTag.VARIANT, b"\x0e")), "bad_field"),
        (rec(fld(FieldTag.CHILD_PID, b"\0" * 8)), "bad_field"),
        (rec(fld(FieldTag.SOCKADDR, b"\x02")), "bad_field"),
        (rec(fld(FieldTag.SOCKADDR, b"")), "bad_field"),
        (rec(fld(FieldTag.NAME, b"n" * 257), kind=RecordKind.RESOLVE), "bad_field"),
        (rec(fld(FieldTag.ADDRESSES, b"1.2.3.4\0" * 128 + b"1"), kind=RecordKind.RESOLVE), "bad_field"),
        (rec(fld(FieldTag.ADDRESSES, b"1.2.3.4\0\0::1\0"), kind=RecordKind.RESOLVE), "bad_field"),
        (rec(fld(FieldTag.ADDRESSES, b"\0"), kind=RecordKind.RESOLVE), "bad_field"),
        (rec(fld(FieldTag.NAME, b"a"), fld(FieldTag.NAME, b"a"), kind=RecordKind.RESOLVE), "duplicate_field"),
        (rec(fld(FieldTag.FUNCTION, b"f" * 17)), "bad_field"),
        (rec(fld(FieldTag.IDS, b"")), "bad_field"),
        (rec(fld(FieldTag.IDS, b"\0" * 12)), "bad_field"),
        (rec(fld(FieldTag.IDS, b"\0" * 32)), "bad_field"),
        (rec(fld(FieldTag.GROUPS, b"\0" * 6)), "bad_field"),
        (rec(fld(FieldTag.GROUPS, b"\0" * 260)), "bad_field"),
        (rec(fld(FieldTag.REQUEST, b"\0" * 8)), "bad_field"),
        (rec(fld(FieldTag.TARGET_PID, b"\0" * 2)), "bad_field"),
        (rec(fld(FieldTag.OPTION, b"")), "bad_field"),
        (rec(fld(FieldTag.ARGUMENT, b"\0" * 4)), "bad_field"),
        (rec(fld(FieldTag.MEMFD_NAME, b"n" * 257)), "bad_field"),
        (rec(fld(FieldTag.MEMFD_FLAGS, b"\0" * 8)), "bad_field"),
        (rec(fld(FieldTag.FILE_FLAGS, b"\0" * 2)), "bad_field"),
        (rec(fld(FieldTag.FILE_MODE, b"\0" * 8)), "bad_field"),
        (rec(fld(FieldTag.CHANGE, b"")), "bad_field"),
        (rec(fld(FieldTag.CHANGE, b"\x01\x00")), "bad_field"),
        (rec(fld(FieldTag.CHANGE, b"\x00")), "bad_field"),
        (rec(fld(FieldTag.CHANGE, b"\x04")), "bad_field"),
        (rec(fld(FieldTag.NEW_PATH, b"a"), fld(FieldTag.NEW_PATH, b"b")), "duplicate_field"),
        (rec(fld(FieldTag.IDS, b"\0" * 8), fld(FieldTag.IDS, b"\0" * 8)), "duplicate_field"),
        (rec(fld(FieldTag.PATH, b"a"), fld(FieldTag.PATH, b"b")), "duplicate_field"),
        (rec(fld(FieldTag.RESULT, b"\0" * 8), fld(FieldTag.RESULT, b"\0" * 8)), "duplicate_field"),
    ],
)
def test_malformed_records_are_rejected_with_a_reason(raw: bytes, why: str) -> None:
    """Each kind of damage is rejected with its own reason."""
    assert reason(raw) == why


def test_error_is_a_value_error_with_a_message() -> None:
    """RecordError is a ValueError whose message starts with the reason."""
    with pytest.raises(ValueError, match=r"^bad_magic: magic 0x5455$"):
        decode(rec(magic=0x5455))


# ---- fuzzing ----------------------------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None)


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


def decode_or_reason(buf: bytes) -> Record | str:
    """The decoded record, or the reason of the RecordError; any other exception fails the test."""
    try:
        return decode(buf)
    except RecordError as exc:
        why = exc.reason
    assert why in REASONS
    return why


@FUZZ
@given(st.binary(max_size=MAX_RECORD_SIZE + 16))
def test_fuzz_arbitrary_bytes(buf: bytes) -> None:
    """Any bytes decode or are rejected with a RecordError, nothing else."""
    decode_or_reason(buf)


@FUZZ
@given(
    kind=st.integers(0, 7),
    flags=st.integers(0, 0xFFFF),
    body=st.binary(max_size=600),
)
def test_fuzz_random_fields_behind_a_valid_header(kind: int, flags: int, body: bytes) -> None:
    """Random field bytes behind a well-formed header: decoded or rejected, never a crash."""
    decode_or_reason(rec(body, kind=kind, flags=flags))


fields_strategy = st.lists(
    st.tuples(st.integers(0, 16), st.binary(max_size=40)),
    max_size=12,
)


@FUZZ
@given(kind=st.sampled_from(list(RecordKind)), fields=fields_strategy)
def test_fuzz_well_framed_fields(kind: RecordKind, fields: Sequence[tuple[int, bytes]]) -> None:
    """Correctly framed fields with random tags and bodies: either a record whose text fields are
    printable-safe strings, or bad_field / duplicate_field."""
    out = decode_or_reason(rec(*(fld(t, b) for t, b in fields), kind=kind))
    if isinstance(out, str):
        assert out in {"bad_field", "duplicate_field"}
        return
    assert out.kind is kind
    for text in (
        out.exe,
        out.cwd,
        out.path,
        out.workload,
        out.name,
        *(out.argv or ()),
        *(out.addresses or ()),
    ):
        assert text is None or isinstance(text, str)


@FUZZ
@given(valid_records())
def test_fuzz_valid_records_round_trip(case: tuple[bytes, dict[str, object]]) -> None:
    """Valid records built field by field, in any order, decode to exactly what was encoded."""
    raw, expected = case
    r = decode(raw)
    for name, value in expected.items():
        assert getattr(r, name) == value, name


@FUZZ
@given(valid_records(), st.data())
def test_fuzz_damaged_valid_records(case: tuple[bytes, dict[str, object]], data: st.DataObject) -> None:
    """A valid record with a byte changed, cut, or extended: decoded or rejected with a reason."""
    raw = bytearray(case[0])
    action = data.draw(st.sampled_from(["flip", "cut", "extend"]))
    if action == "flip":
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    elif action == "cut":
        del raw[data.draw(st.integers(0, len(raw) - 1)) :]
    else:
        raw += data.draw(st.binary(min_size=1, max_size=8))
    out = decode_or_reason(bytes(raw))
    if action != "flip":
        assert out in {"short", "length_mismatch"}
