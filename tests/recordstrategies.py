"""Hypothesis strategies of shim records, shared by the decoder tests, the native fast-path tests
and the fuzz suite (tests/fuzz): `valid_records` (a valid record and what it must decode to),
`framed_records` (records of any kind with random, repeated, unknown and damaged fields) and
`datagrams` (what a hostile peer may send: any of those, damaged valid records, or any bytes)."""

from __future__ import annotations

import socket
import struct

from hypothesis import strategies as st
from recordkit import fld, rec, sockaddr_in

from telltale.nodeagent.records import MAX_RECORD_SIZE, ExecVariant, FieldTag, RecordKind, SockAddr

text_bytes = st.binary(max_size=200)
u32 = st.integers(0, 2**32 - 1)
i32 = st.integers(-(2**31), 2**31 - 1)


def _draw_privilege_fields(draw: st.DrawFn, fields: list[bytes], expected: dict[str, object]) -> None:
    """Maybe adds IDS, GROUPS and ARGUMENT fields (a part of `valid_records`)."""
    if draw(st.booleans()):
        ids = tuple(draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=3)))
        fields.append(fld(FieldTag.IDS, struct.pack(f"<{len(ids)}q", *ids)))
        expected["ids"] = ids
    if draw(st.booleans()):
        groups = tuple(draw(st.lists(u32, max_size=64)))
        fields.append(fld(FieldTag.GROUPS, struct.pack(f"<{len(groups)}I", *groups)))
        expected["groups"] = groups
    if draw(st.booleans()):
        argument = draw(st.integers(0, 2**64 - 1))
        fields.append(fld(FieldTag.ARGUMENT, struct.pack("<Q", argument)))
        expected["argument"] = argument


@st.composite
def valid_records(draw: st.DrawFn) -> tuple[bytes, dict[str, object]]:
    """A valid record and the attribute values it must decode to."""
    expected: dict[str, object] = {}
    fields: list[bytes] = []
    if draw(st.booleans()):
        exe = draw(text_bytes)
        fields.append(fld(FieldTag.EXE, exe))
        expected["exe"] = exe.decode("utf-8", "backslashreplace")
    if draw(st.booleans()):
        args = draw(st.lists(st.binary(max_size=20).filter(lambda a: b"\0" not in a), max_size=8))
        fields.append(fld(FieldTag.ARGV, b"".join(a + b"\0" for a in args)))
        expected["argv"] = tuple(a.decode("utf-8", "backslashreplace") for a in args)
    if draw(st.booleans()):
        creds = draw(st.tuples(u32, u32, u32, u32, u32, u32))
        fields.append(fld(FieldTag.CREDS, struct.pack("<6I", *creds)))
        expected["creds"] = creds
    if draw(st.booleans()):
        result = draw(st.tuples(i32, i32))
        fields.append(fld(FieldTag.RESULT, struct.pack("<ii", *result)))
        expected["result"] = result
    if draw(st.booleans()):
        info = draw(st.tuples(i32, i32, i32))
        fields.append(fld(FieldTag.SOCKINFO, struct.pack("<iii", *info)))
        expected["sockinfo"] = info
    if draw(st.booleans()):
        port = draw(st.integers(0, 65535))
        address = draw(st.ip_addresses(v=4))
        fields.append(fld(FieldTag.SOCKADDR, sockaddr_in(str(address), port)))
        expected["sockaddr"] = SockAddr("inet", str(address), port, sockaddr_in(str(address), port))
    if draw(st.booleans()):
        variant = draw(st.sampled_from(list(ExecVariant)))
        fields.append(fld(FieldTag.VARIANT, bytes([variant])))
        expected["variant"] = variant
    if draw(st.booleans()):
        child = draw(u32)
        fields.append(fld(FieldTag.CHILD_PID, struct.pack("<I", child)))
        expected["child_pid"] = child
    if draw(st.booleans()):
        name = draw(st.binary(max_size=256))
        fields.append(fld(FieldTag.NAME, name))
        expected["name"] = name.decode("utf-8", "backslashreplace")
    if draw(st.booleans()):
        addrs = draw(
            st.lists(st.binary(min_size=1, max_size=20).filter(lambda a: b"\0" not in a), max_size=8)
        )
        fields.append(fld(FieldTag.ADDRESSES, b"".join(a + b"\0" for a in addrs)))
        expected["addresses"] = tuple(a.decode("utf-8", "backslashreplace") for a in addrs)
    _draw_privilege_fields(draw, fields, expected)
    order = draw(st.permutations(range(len(fields))))
    header = {
        "kind": draw(st.sampled_from(list(RecordKind))),
        "flags": draw(st.integers(0, 15)),
        "pid": draw(u32),
        "seq": draw(u32),
        "count": draw(u32),
        "time_ns": draw(st.integers(0, 2**64 - 1)),
    }
    raw = rec(*(fields[i] for i in order), **header)
    expected.update(header)
    return raw, expected


_TEXT = st.one_of(st.text(max_size=40).map(str.encode), st.binary(max_size=40))
_FIXED: dict[int, int] = {
    FieldTag.CREDS: 24,
    FieldTag.RESULT: 8,
    FieldTag.SOCKINFO: 12,
    FieldTag.BACKLOG: 4,
    FieldTag.CHILD_PID: 4,
    FieldTag.REQUEST: 4,
    FieldTag.TARGET_PID: 4,
    FieldTag.OPTION: 4,
    FieldTag.ARGUMENT: 8,
    FieldTag.MEMFD_FLAGS: 4,
    FieldTag.FILE_FLAGS: 4,
    FieldTag.FILE_MODE: 4,
}


@st.composite
def _body(draw: st.DrawFn, tag: int) -> bytes:
    """A field body for `tag`: mostly plausible, sometimes arbitrary."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=30))
    if tag in _FIXED:
        return draw(st.binary(min_size=_FIXED[tag], max_size=_FIXED[tag]))
    if tag in (FieldTag.VARIANT, FieldTag.CHANGE):
        return bytes([draw(st.integers(0, 13))])
    if tag == FieldTag.IDS:
        return draw(st.binary(min_size=8, max_size=24).filter(lambda b: len(b) % 8 == 0))
    if tag == FieldTag.GROUPS:
        return b"".join(struct.pack("<I", g) for g in draw(st.lists(st.integers(0, 2**32 - 1), max_size=65)))
    if tag == FieldTag.SOCKADDR:
        family = draw(st.sampled_from([socket.AF_INET, socket.AF_INET6, socket.AF_UNIX, 0, 17, 65535]))
        return struct.pack("<H", family) + draw(st.one_of(_TEXT, st.binary(min_size=26, max_size=40)))
    if tag in (FieldTag.ARGV, FieldTag.ADDRESSES):
        items = draw(st.lists(_TEXT.map(lambda b: b.replace(b"\0", b"")), max_size=5))
        return b"".join(i + b"\0" for i in items)[: draw(st.integers(0, 300))]
    if tag == FieldTag.FUNCTION:
        return draw(st.sampled_from([b"setuid", b"setresgid", b"setgroups", b"openat", b"capset", b""]))
    return draw(_TEXT)


@st.composite
def framed_records(draw: st.DrawFn) -> bytes:
    """A framed record of any kind with random fields (known, unknown, repeated), sometimes damaged."""
    kind = draw(st.integers(0, 21))
    tags = draw(st.lists(st.one_of(st.integers(0, 36), st.sampled_from([40, 41, 45, 50])), max_size=8))
    fields = [fld(tag, draw(_body(tag))) for tag in tags]
    raw = bytearray(
        rec(
            *fields,
            kind=kind,
            seq=2,
            flags=draw(st.integers(0, 0xFFFF)),
            pid=draw(st.integers(0, 2**32 - 1)),
            ppid=draw(st.sampled_from([0, 1, 2**32 - 1])),
            count=draw(st.sampled_from([0, 1, 2**32 - 1])),
            time_ns=draw(st.integers(0, 2**64 - 1)),
            dropped=draw(st.sampled_from([0, 5])),
        )
    )
    damage = draw(st.sampled_from(["none", "none", "flip", "cut"]))
    if damage == "flip":
        raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
    elif damage == "cut":
        del raw[draw(st.integers(0, len(raw) - 1)) :]
    return bytes(raw)


@st.composite
def damaged_valid_records(draw: st.DrawFn) -> bytes:
    """A valid record with a byte changed, cut short, or extended."""
    raw = bytearray(draw(valid_records())[0])
    action = draw(st.sampled_from(["flip", "cut", "extend"]))
    if action == "flip":
        raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
    elif action == "cut":
        del raw[draw(st.integers(0, len(raw) - 1)) :]
    else:
        raw += draw(st.binary(min_size=1, max_size=8))
    return bytes(raw)


def datagrams(max_size: int = MAX_RECORD_SIZE + 16) -> st.SearchStrategy[bytes]:
    """One message as a hostile or broken peer may send it, at most `max_size` bytes."""
    return st.one_of(
        valid_records().map(lambda case: case[0]),
        damaged_valid_records(),
        framed_records(),
        st.binary(max_size=max_size),
    ).filter(lambda raw: len(raw) <= max_size)
