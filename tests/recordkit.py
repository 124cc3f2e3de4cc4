"""A hand-written encoder of shim records, straight from shim/FORMAT.md and independent of the
shim, for the decoder tests; and `reason`, the RecordError reason a buffer is refused with."""

from __future__ import annotations

import socket
import struct

import pytest

from telltale.nodeagent.records import HEADER_SIZE, MAGIC, VERSION, RecordError, RecordKind, decode

HEADER = struct.Struct("<HBBHHIIIIQII")


def fld(tag: int, body: bytes) -> bytes:
    """One tag-length-value field."""
    return struct.pack("<HH", tag, len(body)) + body


def rec(
    *fields: bytes,
    kind: int = RecordKind.CONNECT,
    flags: int = 0,
    pid: int = 100,
    ppid: int = 1,
    tid: int = 101,
    count: int = 1,
    time_ns: int = 1_700_000_000_000_000_000,
    dropped: int = 0,
    seq: int = 1,
    magic: int = MAGIC,
    version: int = VERSION,
    length: int | None = None,
) -> bytes:
    """A record: header, then the given fields; `length` overrides the computed length."""
    body = b"".join(fields)
    total = HEADER_SIZE + len(body) if length is None else length
    return (
        HEADER.pack(magic, version, kind, total, flags, pid, ppid, tid, count, time_ns, dropped, seq) + body
    )


def sockaddr_in(address: str, port: int) -> bytes:
    return struct.pack("<H", socket.AF_INET) + struct.pack(">H", port) + socket.inet_aton(address) + bytes(8)


def sockaddr_in6(address: str, port: int, scope: int = 0) -> bytes:
    return (
        struct.pack("<H", socket.AF_INET6)
        + struct.pack(">HI", port, 0)
        + socket.inet_pton(socket.AF_INET6, address)
        + struct.pack("<I", scope)
    )


def reason(buf: bytes | bytearray | memoryview) -> str:
    with pytest.raises(RecordError) as info:
        decode(buf)
    return info.value.reason
