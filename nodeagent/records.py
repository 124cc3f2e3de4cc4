"""Decoder of the shim's record format v1 (shim/FORMAT.md).

One record is one SOCK_SEQPACKET message: a 40-byte little-endian header followed by
tag-length-value fields. `decode` turns one message into a `Record` or raises `RecordError`
with a short machine-usable `reason`; it raises nothing else, whatever the input.
Byte strings are decoded as UTF-8 with ``backslashreplace``, so every text field is printable-safe.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass
from typing import Final

__all__ = [
    "HEADER_SIZE",
    "MAGIC",
    "MAX_RECORD_SIZE",
    "VERSION",
    "ExecVariant",
    "FieldTag",
    "Record",
    "RecordError",
    "RecordFlag",
    "RecordKind",
    "SockAddr",
    "decode",
    "decode_sockaddr",
]

MAGIC: Final = 0x5454
VERSION: Final = 1
HEADER_SIZE: Final = 40
MAX_RECORD_SIZE: Final = 4096

_HEADER: Final = struct.Struct("<HBBHHIIIIQII")
_FIELD: Final = struct.Struct("<HH")
_U8: Final = struct.Struct("<B")
_U16_BE: Final = struct.Struct(">H")
_U32: Final = struct.Struct("<I")
_I32: Final = struct.Struct("<i")
_I32X2: Final = struct.Struct("<ii")
_I32X3: Final = struct.Struct("<iii")
_U32X6: Final = struct.Struct("<6I")
_FAMILY: Final = struct.Struct("<H")

_AF_UNIX: Final = 1
_AF_INET: Final = 2
_AF_INET6: Final = 10


class RecordKind(enum.IntEnum):
    """What a record reports."""

    PROC_START = 1
    EXEC = 2
    CONNECT = 3
    BIND = 4
    LISTEN = 5


class RecordFlag(enum.IntFlag):
    """Header flags. Unknown bits are kept, so a newer shim does not break an older agent."""

    REPEAT = 1
    TRUNCATED = 2
    FORKED = 4
    NODEDUP = 8


class FieldTag(enum.IntEnum):
    """Field tags of format v1."""

    EXE = 1
    ARGV = 2
    CWD = 3
    CREDS = 4
    SOCKADDR = 5
    RESULT = 6
    SOCKINFO = 7
    BACKLOG = 8
    PATH = 9
    VARIANT = 10
    WORKLOAD = 11
    CHILD_PID = 12


class ExecVariant(enum.IntEnum):
    """Which exec or spawn entry point the program called."""

    EXECVE = 1
    EXECV = 2
    EXECVP = 3
    EXECVPE = 4
    EXECL = 5
    EXECLP = 6
    EXECLE = 7
    FEXECVE = 8
    EXECVEAT = 9
    POSIX_SPAWN = 10
    POSIX_SPAWNP = 11


class RecordError(ValueError):
    """A message that is not a valid v1 record.

    `reason` is one of: "short", "too_long", "bad_magic", "bad_version", "unknown_kind",
    "length_mismatch", "field_overrun", "bad_field", "duplicate_field".
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


@dataclass(slots=True, frozen=True)
class SockAddr:
    """A socket address as the program gave it.

    family: "inet", "inet6", "unix" or "other:N". address: dotted or compressed IP (with "%scope"
    for a scoped IPv6 address), a unix path ("@name" for the abstract namespace, "" when unnamed),
    the remaining bytes in hex for other families, or "" when the bytes are too short for their
    family. port: the port for inet/inet6 (None when too short), else None. raw: the bytes.
    """

    family: str
    address: str
    port: int | None
    raw: bytes


@dataclass(slots=True, frozen=True)
class Record:
    """One decoded record. Fields absent from the message are None."""

    kind: RecordKind
    flags: RecordFlag
    pid: int
    ppid: int
    tid: int
    count: int
    time_ns: int
    dropped: int
    seq: int
    exe: str | None = None
    argv: tuple[str, ...] | None = None
    cwd: str | None = None
    creds: tuple[int, int, int, int, int, int] | None = None
    sockaddr: SockAddr | None = None
    result: tuple[int, int] | None = None
    sockinfo: tuple[int, int, int] | None = None
    backlog: int | None = None
    path: str | None = None
    variant: ExecVariant | None = None
    workload: str | None = None
    child_pid: int | None = None


_KINDS: Final[dict[int, RecordKind]] = {k.value: k for k in RecordKind}
_VARIANTS: Final[dict[int, ExecVariant]] = {v.value: v for v in ExecVariant}
_LAST_TAG: Final = max(FieldTag)


def _text(body: memoryview) -> str:
    return str(body, "utf-8", "backslashreplace")


def _argv(body: memoryview) -> tuple[str, ...]:
    """Each argument is followed by a NUL; a cut-off last argument has none."""
    if not body:
        return ()
    parts = bytes(body).split(b"\0")
    if not parts[-1]:
        parts.pop()
    return tuple(p.decode("utf-8", "backslashreplace") for p in parts)


def _sized(body: memoryview, size: int, tag: FieldTag) -> memoryview:
    if len(body) != size:
        raise RecordError("bad_field", f"field {tag.name} has {len(body)} bytes, expected {size}")
    return body


def decode_sockaddr(raw: bytes) -> SockAddr:
    """Decodes raw struct sockaddr bytes; raises RecordError("bad_field") below the 2-byte family."""
    if len(raw) < 2:
        raise RecordError("bad_field", f"SOCKADDR has {len(raw)} bytes, fewer than a family")
    (family,) = _FAMILY.unpack_from(raw, 0)
    if family == _AF_INET:
        if len(raw) < 8:
            return SockAddr("inet", "", None, raw)
        (port,) = _U16_BE.unpack_from(raw, 2)
        return SockAddr("inet", str(ipaddress.IPv4Address(raw[4:8])), port, raw)
    if family == _AF_INET6:
        if len(raw) < 24:
            return SockAddr("inet6", "", None, raw)
        (port,) = _U16_BE.unpack_from(raw, 2)
        address = ipaddress.IPv6Address(raw[8:24]).compressed
        if len(raw) >= 28:
            (scope,) = _U32.unpack_from(raw, 24)
            if scope:
                address = f"{address}%{scope}"
        return SockAddr("inet6", address, port, raw)
    if family == _AF_UNIX:
        name = raw[2:]
        if name[:1] == b"\0":
            return SockAddr("unix", "@" + name[1:].decode("utf-8", "backslashreplace"), None, raw)
        return SockAddr("unix", name.split(b"\0", 1)[0].decode("utf-8", "backslashreplace"), None, raw)
    return SockAddr(f"other:{family}", raw[2:].hex(), None, raw)


class _Fields:
    """The optional fields of a record being decoded."""

    __slots__ = (
        "argv",
        "backlog",
        "child_pid",
        "creds",
        "cwd",
        "exe",
        "path",
        "result",
        "sockaddr",
        "sockinfo",
        "variant",
        "workload",
    )

    def __init__(self) -> None:
        self.exe: str | None = None
        self.argv: tuple[str, ...] | None = None
        self.cwd: str | None = None
        self.creds: tuple[int, int, int, int, int, int] | None = None
        self.sockaddr: SockAddr | None = None
        self.result: tuple[int, int] | None = None
        self.sockinfo: tuple[int, int, int] | None = None
        self.backlog: int | None = None
        self.path: str | None = None
        self.variant: ExecVariant | None = None
        self.workload: str | None = None
        self.child_pid: int | None = None


def _parse_field(fields: _Fields, tag: int, body: memoryview) -> None:
    """Stores the value of one known field; raises RecordError("bad_field")."""
    if tag == FieldTag.SOCKADDR:
        fields.sockaddr = decode_sockaddr(bytes(body))
    elif tag == FieldTag.RESULT:
        r0, r1 = _I32X2.unpack(_sized(body, 8, FieldTag.RESULT))
        fields.result = (r0, r1)
    elif tag == FieldTag.SOCKINFO:
        s0, s1, s2 = _I32X3.unpack(_sized(body, 12, FieldTag.SOCKINFO))
        fields.sockinfo = (s0, s1, s2)
    elif tag == FieldTag.ARGV:
        fields.argv = _argv(body)
    elif tag == FieldTag.PATH:
        fields.path = _text(body)
    elif tag == FieldTag.VARIANT:
        (value,) = _U8.unpack(_sized(body, 1, FieldTag.VARIANT))
        variant = _VARIANTS.get(value)
        if variant is None:
            raise RecordError("bad_field", f"unknown exec variant {value}")
        fields.variant = variant
    elif tag == FieldTag.BACKLOG:
        (fields.backlog,) = _I32.unpack(_sized(body, 4, FieldTag.BACKLOG))
    elif tag == FieldTag.CHILD_PID:
        (fields.child_pid,) = _U32.unpack(_sized(body, 4, FieldTag.CHILD_PID))
    elif tag == FieldTag.EXE:
        fields.exe = _text(body)
    elif tag == FieldTag.CWD:
        fields.cwd = _text(body)
    elif tag == FieldTag.CREDS:
        c = _U32X6.unpack(_sized(body, 24, FieldTag.CREDS))
        fields.creds = (c[0], c[1], c[2], c[3], c[4], c[5])
    else:  # WORKLOAD
        fields.workload = _text(body)


def decode(buf: bytes | bytearray | memoryview) -> Record:
    """Decodes one record.

    Raises RecordError (and nothing else) when the message is not a valid v1 record: shorter than
    a header, longer than 4096 bytes, wrong magic or version, unknown kind, header length different
    from the message length, a field running past the end, a known field of the wrong size or
    value, or a known field given twice. Unknown field tags are skipped; unknown flag bits kept.
    """
    mv = memoryview(buf)
    if mv.ndim != 1 or mv.format != "B":
        try:
            mv = mv.cast("B")
        except TypeError as exc:  # non-contiguous buffers
            raise RecordError("short", f"unusable buffer: {exc}") from None
    n = len(mv)
    if n < HEADER_SIZE:
        raise RecordError("short", f"{n} bytes, a header takes {HEADER_SIZE}")
    if n > MAX_RECORD_SIZE:
        raise RecordError("too_long", f"{n} bytes, at most {MAX_RECORD_SIZE}")
    magic, version, kind, length, flags, pid, ppid, tid, count, time_ns, dropped, seq = _HEADER.unpack_from(
        mv, 0
    )
    if magic != MAGIC:
        raise RecordError("bad_magic", f"magic {magic:#06x}")
    if version != VERSION:
        raise RecordError("bad_version", f"version {version}")
    record_kind = _KINDS.get(kind)
    if record_kind is None:
        raise RecordError("unknown_kind", f"kind {kind}")
    if length != n:
        raise RecordError("length_mismatch", f"header says {length} bytes, message has {n}")

    fields = _Fields()
    seen = 0
    off = HEADER_SIZE
    unpack_field = _FIELD.unpack_from
    while off < n:
        if n - off < 4:
            raise RecordError("field_overrun", f"{n - off} stray bytes at offset {off}")
        tag, flen = unpack_field(mv, off)
        off += 4
        end = off + flen
        if end > n:
            raise RecordError("field_overrun", f"field {tag} claims {flen} bytes, {n - off} remain")
        if 1 <= tag <= _LAST_TAG:
            bit = 1 << tag
            if seen & bit:
                raise RecordError("duplicate_field", f"field {FieldTag(tag).name} appears twice")
            seen |= bit
            _parse_field(fields, tag, mv[off:end])
        off = end

    return Record(
        record_kind,
        RecordFlag(flags),
        pid,
        ppid,
        tid,
        count,
        time_ns,
        dropped,
        seq,
        fields.exe,
        fields.argv,
        fields.cwd,
        fields.creds,
        fields.sockaddr,
        fields.result,
        fields.sockinfo,
        fields.backlog,
        fields.path,
        fields.variant,
        fields.workload,
        fields.child_pid,
    )
