"""Decoder of the shim's record format v1 (shim/FORMAT.md).

One record is one SOCK_SEQPACKET message: a 40-byte little-endian header followed by
tag-length-value fields. `decode` turns one message into a `Record` or raises `RecordError`
with a short machine-usable `reason`; it raises nothing else, whatever the input.
Byte strings are decoded as UTF-8 with ``backslashreplace``, so every text field is printable-safe.
"""

from __future__ import annotations

import enum
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, cast

__all__ = [
    "HEADER_SIZE",
    "MAGIC",
    "MAX_RECORD_SIZE",
    "VERSION",
    "ExecVariant",
    "FieldTag",
    "FileChange",
    "GapReason",
    "LibraryFlag",
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
_U64: Final = struct.Struct("<Q")
_I32: Final = struct.Struct("<i")
_I32X2: Final = struct.Struct("<ii")
_I32X3: Final = struct.Struct("<iii")
_U64X3: Final = struct.Struct("<3Q")
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
    SOCKET = 6
    ACCEPT = 7
    SEND = 8
    RESOLVE = 9
    FILE_OPEN = 10
    FILE_CHANGE = 11
    CREDENTIALS = 12
    PTRACE = 13
    PRCTL = 14
    MEMFD = 15
    LIBRARY_LOAD = 16
    MEMORY_PROTECT = 17
    # Kinds 16-19 belong to other parts of the format.
    UNSAFE_CALL = 18
    CRYPTO = 19
    COVERAGE_GAP = 20


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
    NAME = 13
    ADDRESSES = 14
    FUNCTION = 15
    IDS = 16
    GROUPS = 17
    REQUEST = 18
    TARGET_PID = 19
    OPTION = 20
    ARGUMENT = 21
    MEMFD_NAME = 22
    MEMFD_FLAGS = 23
    FILE_FLAGS = 24
    FILE_MODE = 25
    CHANGE = 26
    NEW_PATH = 27
    # Tags 28-35 are known only in the kinds that carry them (_KIND_PARSERS); elsewhere they are
    # skipped like unknown tags.
    REQUESTED = 28
    LIB_FLAGS = 29
    PROTECTION = 30
    MAP_FLAGS = 31
    LENGTH = 32
    CAPABILITIES = 33
    LD_PRELOAD = 34
    LD_LIBRARY_PATH = 35
    # Tags 28-49 belong to other parts of the format.
    # Tag 40 is known in every kind; 41-45 only in UNSAFE_CALL and CRYPTO (_KIND_PARSERS).
    CALLER = 40
    CALL_SITE = 41
    ALGORITHM = 42
    PROTOCOL = 43
    LIBRARY = 44
    PURPOSE = 45
    GAP_REASONS = 50  # COVERAGE_GAP only (_KIND_PARSERS)


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
    SYSTEM = 12
    POPEN = 13


class LibraryFlag(enum.IntFlag):
    """LIB_FLAGS of a LIBRARY_LOAD record."""

    AT_START = 1
    WRITABLE_DIR = 2


class FileChange(enum.IntEnum):
    """What a FILE_CHANGE record says happened to a file."""

    CHMOD = 1
    RENAME = 2
    UNLINK = 3


class GapReason(enum.IntFlag):
    """Why a COVERAGE_GAP's program is not observed (bits of GAP_REASONS; unknown bits kept)."""

    STATIC = 1
    GO = 2
    SETUID = 4
    SETGID = 8
    FILE_CAPABILITIES = 16
    ENVIRONMENT_STRIPPED = 32


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
    for a scoped IPv6 address), a unix path ("@name" for the abstract namespace, any NUL in the
    name shown as "@"; "" when unnamed),
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
    name: str | None = None
    addresses: tuple[str, ...] | None = None
    function: str | None = None
    ids: tuple[int, ...] | None = None
    groups: tuple[int, ...] | None = None
    request: int | None = None
    target_pid: int | None = None
    option: int | None = None
    argument: int | None = None
    memfd_name: str | None = None
    memfd_flags: int | None = None
    file_flags: int | None = None
    file_mode: int | None = None
    change: FileChange | None = None
    new_path: str | None = None
    requested: str | None = None
    lib_flags: LibraryFlag | None = None
    protection: int | None = None
    map_flags: int | None = None
    length: int | None = None
    capabilities: tuple[int, int, int] | None = None
    ld_preload: tuple[str, ...] | None = None
    ld_library_path: tuple[str, ...] | None = None
    gap_reasons: GapReason | None = None
    caller: str | None = None
    call_site: int | None = None
    algorithm: str | None = None
    protocol: str | None = None
    library: str | None = None
    purpose: str | None = None


_KINDS: Final[dict[int, RecordKind]] = {k.value: k for k in RecordKind}
_VARIANTS: Final[dict[int, ExecVariant]] = {v.value: v for v in ExecVariant}
_CHANGES: Final[dict[int, FileChange]] = {c.value: c for c in FileChange}
# RecordFlag(n) costs about a microsecond; the known combinations are looked up instead.
_FLAG_VALUES: Final = tuple(RecordFlag(i) for i in range(16))


def _sized(tag: FieldTag, flen: int, size: int) -> None:
    if flen != size:
        raise RecordError("bad_field", f"field {tag.name} has {flen} bytes, expected {size}")


def decode_sockaddr(raw: bytes) -> SockAddr:
    """Decodes raw struct sockaddr bytes; raises RecordError("bad_field") below the 2-byte family."""
    if len(raw) < 2:
        raise RecordError("bad_field", f"SOCKADDR has {len(raw)} bytes, fewer than a family")
    (family,) = _FAMILY.unpack_from(raw, 0)
    if family == _AF_INET:
        if len(raw) < 8:
            return SockAddr("inet", "", None, raw)
        (port,) = _U16_BE.unpack_from(raw, 2)
        return SockAddr("inet", socket.inet_ntop(socket.AF_INET, raw[4:8]), port, raw)
    if family == _AF_INET6:
        if len(raw) < 24:
            return SockAddr("inet6", "", None, raw)
        (port,) = _U16_BE.unpack_from(raw, 2)
        address = socket.inet_ntop(socket.AF_INET6, raw[8:24])
        if len(raw) >= 28:
            (scope,) = _U32.unpack_from(raw, 24)
            if scope:
                address = f"{address}%{scope}"
        return SockAddr("inet6", address, port, raw)
    if family == _AF_UNIX:
        name = raw[2:]
        if name[:1] == b"\0":  # abstract: length-delimited, NULs shown as "@" (as ss does)
            return SockAddr("unix", name.replace(b"\0", b"@").decode("utf-8", "backslashreplace"), None, raw)
        return SockAddr("unix", name.split(b"\0", 1)[0].decode("utf-8", "backslashreplace"), None, raw)
    return SockAddr(f"other:{family}", raw[2:].hex(), None, raw)


class _RecordBuilder:
    """A mutable twin of Record, with the same slots in the same order.

    A frozen dataclass sets each field through object.__setattr__, which makes constructing a
    23-field Record cost about ten times as much as a plain class. The decoder fills a builder
    and then turns it into a Record by assigning __class__, which CPython allows between classes of
    identical layout; the result is an ordinary frozen Record (tests compare it with one built
    normally).
    """

    __slots__ = Record.__slots__

    def __init__(self, kind: RecordKind, flags: RecordFlag) -> None:
        self.kind = kind
        self.flags = flags
        self.pid = self.ppid = self.tid = self.count = self.time_ns = self.dropped = self.seq = 0
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
        self.name: str | None = None
        self.addresses: tuple[str, ...] | None = None
        self.function: str | None = None
        self.ids: tuple[int, ...] | None = None
        self.groups: tuple[int, ...] | None = None
        self.request: int | None = None
        self.target_pid: int | None = None
        self.option: int | None = None
        self.argument: int | None = None
        self.memfd_name: str | None = None
        self.memfd_flags: int | None = None
        self.file_flags: int | None = None
        self.file_mode: int | None = None
        self.change: FileChange | None = None
        self.new_path: str | None = None
        self.requested: str | None = None
        self.lib_flags: LibraryFlag | None = None
        self.protection: int | None = None
        self.map_flags: int | None = None
        self.length: int | None = None
        self.capabilities: tuple[int, int, int] | None = None
        self.ld_preload: tuple[str, ...] | None = None
        self.ld_library_path: tuple[str, ...] | None = None
        self.gap_reasons: GapReason | None = None
        self.caller: str | None = None
        self.call_site: int | None = None
        self.algorithm: str | None = None
        self.protocol: str | None = None
        self.library: str | None = None
        self.purpose: str | None = None

    def build(self) -> Record:
        self.__class__ = Record  # type: ignore[assignment]
        return cast(Record, self)


# One parser per known tag: (builder, message, offset of the body, body length) -> None.
# Each checks the body's size and stores the value; RecordError("bad_field") on a bad body.
_Parser = Callable[[_RecordBuilder, memoryview, int, int], None]


def _exe(r: _RecordBuilder, mv: memoryview, off: int, flen: int) -> None:
    r.exe = str(mv[off : off + flen], "utf-8", "backslashreplace")


def _argv(r: _RecordBuilder, mv: memoryview, off: int, flen: int) -> None:
    """Each argument is followed by a NUL; a cut-off last argument has none."""
    parts = bytes(mv[off : off + flen]).split(b"\0")
    if not parts[-1]:
        parts.pop()
    r.argv = tuple([p.decode("utf-8", "backslashreplace") for p in parts])


def _cwd(r: _RecordBuilder, mv: memoryview, off: int, flen: int) -> None:
    r.cwd = str(mv[off : off + flen], "utf-8", "backslashreplace")


def _creds(r: _RecordBuilder, mv: memoryview, off: int, flen: int) -> None:
    _sized(FieldTag.CREDS, flen, 24)
    c = _U32X6.unpack_from(mv, off)
    r.creds = (c[0], c[1], c[2], c[3], c[4], c[5])


def _sockaddr(r: _RecordBuilder, mv: memoryview, off: int, flen: int) -> None:
    raw = bytes(mv[off : off + flen])
    addr = _SOCKADDR_CACHE.get(raw)
    if addr is None:
        addr = decode_sockaddr(raw)
        if len(_SOCKADDR_CACHE) >= _SOCKADDR_CACHE_SIZE:
            _SOCKADDR_CACHE.clear()
        _SOCKADDR_CACHE[raw] = addr
    r.sockaddr = addr


def _result(r: _RecordBuilder, mv: memoryview, off: int, flen: int) -> None:
    _sized(FieldTag.RESULT, flen, 8)
    value, err = _I32X2.unpack_from(mv, off)
    r.result = (value, err)


def _sockinfo(r: _RecordBuilder, mv: memoryview, off: int, flen: int) -> None:
    _sized(FieldTag.SOCKINFO, flen, 12)
    domain, type_, protocol = _I32X3.unpack_from(mv, off)
    r.sockinfo = (domain, type_, protocol)


def _backlog(r: _RecordBuilder, mv: memoryview, off: int, flen: int) -> None:
    _sized(FieldTag.BACKLOG, flen, 4)
    (r.backlog,) = _I32.unpack_from(mv, off)


def _path(r: _RecordBuilder, mv: memoryview, off: int, flen: int) -> None:
    r.path = str(mv[off : off + flen], "utf-8", "backslashreplace")


def _variant(r: _RecordBuilder, mv: memoryview, off: int, flen: int) -> None:
    _sized(FieldTag.VARIANT, flen, 1)
    variant = _VARIANTS.get(mv[off])
    if variant is None:
        raise RecordError("bad_field", f"unknown exec variant {mv[off]}")
    r.variant = variant


def _workload(r: _RecordBuilder, mv: memoryview, off: int, flen: int) -> None:
    r.workload = str(mv[off : off + flen], "utf-8", "backslashreplace")


def _child_pid(r: _RecordBuilder, mv: memoryview, off: int, flen: int) -> None:
    _sized(FieldTag.CHILD_PID, flen, 4)
    (r.child_pid,) = _U32.unpack_from(mv, off)


def _name(r: _RecordBuilder, mv: memoryview, off: int, flen: int) -> None:
    if flen > _NAME_MAX:
        raise RecordError("bad_field", f"field NAME has {flen} bytes, at most {_NAME_MAX}")
    r.name = str(mv[off : off + flen], "utf-8", "backslashreplace")


def _addresses(r: _RecordBuilder, mv: memoryview, off: int, flen: int) -> None:
    """Each address is followed by a NUL; a cut-off last address (a REPEAT copy cut to size) has
    none. An empty field is an empty list; an empty address is an error."""
    if flen > _ADDRESSES_MAX:
        raise RecordError("bad_field", f"field ADDRESSES has {flen} bytes, at most {_ADDRESSES_MAX}")
    parts = bytes(mv[off : off + flen]).split(b"\0")
    if not parts[-1]:
        parts.pop()
    if b"" in parts:
        raise RecordError("bad_field", "field ADDRESSES holds an empty address")
    r.addresses = tuple([p.decode("utf-8", "backslashreplace") for p in parts])


def _function(r: _RecordBuilder, mv: memoryview, off: int, flen: int) -> None:
    if flen > _FUNCTION_MAX:
        raise RecordError("bad_field", f"field FUNCTION has {flen} bytes, at most {_FUNCTION_MAX}")
    r.function = str(mv[off : off + flen], "utf-8", "backslashreplace")


def _ids(r: _RecordBuilder, mv: memoryview, off: int, flen: int) -> None:
    """One to three i64 ids, -1 meaning unchanged."""
    if flen not in (8, 16, 24):
        raise RecordError("bad_field", f"field IDS has {flen} bytes, expected 8, 16 or 24")
    r.ids = struct.unpack_from(f"<{flen // 8}q", mv, off)


def _groups(r: _RecordBuilder, mv: memoryview, off: int, flen: int) -> None:
    if flen % 4 or flen > 4 * _GROUPS_MAX:
        raise RecordError("bad_field", f"field GROUPS has {flen} bytes, expected a multiple of 4 up to 256")
    r.groups = struct.unpack_from(f"<{flen // 4}I", mv, off)


def _request(r: _RecordBuilder, mv: memoryview, off: int, flen: int) -> None:
    _sized(FieldTag.REQUEST, flen, 4)
    (r.request,) = _I32.unpack_from(mv, off)


def _target_pid(r: _RecordBuilder, mv: memoryview, off: int, flen: int) -> None:
    _sized(FieldTag.TARGET_PID, flen, 4)
    (r.target_pid,) = _U32.unpack_from(mv, off)


def _option(r: _RecordBuilder, mv: memoryview, off: int, flen: int) -> None:
    _sized(FieldTag.OPTION, flen, 4)
    (r.option,) = _I32.unpack_from(mv, off)


def _argument(r: _RecordBuilder, mv: memoryview, off: int, flen: int) -> None:
    _sized(FieldTag.ARGUMENT, flen, 8)
    (r.argument,) = _U64.unpack_from(mv, off)


def _memfd_name(r: _RecordBuilder, mv: memoryview, off: int, flen: int) -> None:
    if flen > _MEMFD_NAME_MAX:
        raise RecordError("bad_field", f"field MEMFD_NAME has {flen} bytes, at most {_MEMFD_NAME_MAX}")
    r.memfd_name = str(mv[off : off + flen], "utf-8", "backslashreplace")


def _memfd_flags(r: _RecordBuilder, mv: memoryview, off: int, flen: int) -> None:
    _sized(FieldTag.MEMFD_FLAGS, flen, 4)
    (r.memfd_flags,) = _U32.unpack_from(mv, off)


def _file_flags(r: _RecordBuilder, mv: memoryview, off: int, flen: int) -> None:
    _sized(FieldTag.FILE_FLAGS, flen, 4)
    (r.file_flags,) = _I32.unpack_from(mv, off)


def _file_mode(r: _RecordBuilder, mv: memoryview, off: int, flen: int) -> None:
    _sized(FieldTag.FILE_MODE, flen, 4)
    (r.file_mode,) = _U32.unpack_from(mv, off)


def _change(r: _RecordBuilder, mv: memoryview, off: int, flen: int) -> None:
    _sized(FieldTag.CHANGE, flen, 1)
    change = _CHANGES.get(mv[off])
    if change is None:
        raise RecordError("bad_field", f"unknown file change {mv[off]}")
    r.change = change


def _new_path(r: _RecordBuilder, mv: memoryview, off: int, flen: int) -> None:
    r.new_path = str(mv[off : off + flen], "utf-8", "backslashreplace")


def _requested(r: _RecordBuilder, mv: memoryview, off: int, flen: int) -> None:
    if flen > _PATH_MAX:
        raise RecordError("bad_field", f"field REQUESTED has {flen} bytes, at most {_PATH_MAX}")
    r.requested = str(mv[off : off + flen], "utf-8", "backslashreplace")


def _lib_flags(r: _RecordBuilder, mv: memoryview, off: int, flen: int) -> None:
    _sized(FieldTag.LIB_FLAGS, flen, 1)
    bits = mv[off]
    if bits & ~_LIB_FLAGS_KNOWN:
        raise RecordError("bad_field", f"unknown library flags {bits:#x}")
    r.lib_flags = LibraryFlag(bits)


def _protection(r: _RecordBuilder, mv: memoryview, off: int, flen: int) -> None:
    _sized(FieldTag.PROTECTION, flen, 4)
    (r.protection,) = _I32.unpack_from(mv, off)


def _map_flags(r: _RecordBuilder, mv: memoryview, off: int, flen: int) -> None:
    _sized(FieldTag.MAP_FLAGS, flen, 4)
    (r.map_flags,) = _I32.unpack_from(mv, off)


def _length(r: _RecordBuilder, mv: memoryview, off: int, flen: int) -> None:
    _sized(FieldTag.LENGTH, flen, 8)
    (r.length,) = _U64.unpack_from(mv, off)


def _capabilities(r: _RecordBuilder, mv: memoryview, off: int, flen: int) -> None:
    _sized(FieldTag.CAPABILITIES, flen, 24)
    effective, permitted, inheritable = _U64X3.unpack_from(mv, off)
    r.capabilities = (effective, permitted, inheritable)


def _ld_preload(r: _RecordBuilder, mv: memoryview, off: int, flen: int) -> None:
    """Each entry is followed by a NUL (a cut-off last entry has none); an entry is never empty."""
    if flen > _PATH_MAX:
        raise RecordError("bad_field", f"field LD_PRELOAD has {flen} bytes, at most {_PATH_MAX}")
    parts = bytes(mv[off : off + flen]).split(b"\0")
    if not parts[-1]:
        parts.pop()
    if not parts or b"" in parts:
        raise RecordError("bad_field", "field LD_PRELOAD holds an empty entry")
    r.ld_preload = tuple([p.decode("utf-8", "backslashreplace") for p in parts])


def _ld_library_path(r: _RecordBuilder, mv: memoryview, off: int, flen: int) -> None:
    """The value verbatim, split as the loader does (at ':' and ';'); empty entries are kept."""
    if not 0 < flen <= _PATH_MAX:
        raise RecordError("bad_field", f"field LD_LIBRARY_PATH has {flen} bytes, expected 1 to {_PATH_MAX}")
    text = str(mv[off : off + flen], "utf-8", "backslashreplace")
    r.ld_library_path = tuple(text.replace(";", ":").split(":"))


def _gap_reasons(r: _RecordBuilder, mv: memoryview, off: int, flen: int) -> None:
    _sized(FieldTag.GAP_REASONS, flen, 4)
    (bits,) = _U32.unpack_from(mv, off)
    r.gap_reasons = GapReason(bits)


def _caller(r: _RecordBuilder, mv: memoryview, off: int, flen: int) -> None:
    r.caller = _bounded_text(FieldTag.CALLER, mv, off, flen, _CALLER_MAX)


def _call_site(r: _RecordBuilder, mv: memoryview, off: int, flen: int) -> None:
    _sized(FieldTag.CALL_SITE, flen, 8)
    (r.call_site,) = _U64.unpack_from(mv, off)


def _algorithm(r: _RecordBuilder, mv: memoryview, off: int, flen: int) -> None:
    r.algorithm = _bounded_text(FieldTag.ALGORITHM, mv, off, flen, _CRYPTO_WORD_MAX)


def _protocol(r: _RecordBuilder, mv: memoryview, off: int, flen: int) -> None:
    r.protocol = _bounded_text(FieldTag.PROTOCOL, mv, off, flen, _CRYPTO_WORD_MAX)


def _library(r: _RecordBuilder, mv: memoryview, off: int, flen: int) -> None:
    r.library = _bounded_text(FieldTag.LIBRARY, mv, off, flen, _CALLER_MAX)


def _purpose(r: _RecordBuilder, mv: memoryview, off: int, flen: int) -> None:
    r.purpose = _bounded_text(FieldTag.PURPOSE, mv, off, flen, _CRYPTO_WORD_MAX)


def _bounded_text(tag: FieldTag, mv: memoryview, off: int, flen: int, limit: int) -> str:
    """A byte-string field of 1 to `limit` bytes."""
    if not 0 < flen <= limit:
        raise RecordError("bad_field", f"field {tag.name} has {flen} bytes, expected 1 to {limit}")
    return str(mv[off : off + flen], "utf-8", "backslashreplace")


_CALLER_MAX: Final = 512
_CRYPTO_WORD_MAX: Final = 32
_NAME_MAX: Final = 256
_ADDRESSES_MAX: Final = 1024
_FUNCTION_MAX: Final = 16
_GROUPS_MAX: Final = 64
_MEMFD_NAME_MAX: Final = 256
_PATH_MAX: Final = 1024
_LIB_FLAGS_KNOWN: Final = int(LibraryFlag.AT_START | LibraryFlag.WRITABLE_DIR)

_PARSERS: Final[dict[int, _Parser]] = {
    FieldTag.EXE: _exe,
    FieldTag.ARGV: _argv,
    FieldTag.CWD: _cwd,
    FieldTag.CREDS: _creds,
    FieldTag.SOCKADDR: _sockaddr,
    FieldTag.RESULT: _result,
    FieldTag.SOCKINFO: _sockinfo,
    FieldTag.BACKLOG: _backlog,
    FieldTag.PATH: _path,
    FieldTag.VARIANT: _variant,
    FieldTag.WORKLOAD: _workload,
    FieldTag.CHILD_PID: _child_pid,
    FieldTag.NAME: _name,
    FieldTag.ADDRESSES: _addresses,
    FieldTag.FUNCTION: _function,
    FieldTag.IDS: _ids,
    FieldTag.GROUPS: _groups,
    FieldTag.REQUEST: _request,
    FieldTag.TARGET_PID: _target_pid,
    FieldTag.OPTION: _option,
    FieldTag.ARGUMENT: _argument,
    FieldTag.MEMFD_NAME: _memfd_name,
    FieldTag.MEMFD_FLAGS: _memfd_flags,
    FieldTag.FILE_FLAGS: _file_flags,
    FieldTag.FILE_MODE: _file_mode,
    FieldTag.CHANGE: _change,
    FieldTag.NEW_PATH: _new_path,
    FieldTag.CALLER: _caller,
}
# Tags known only in some kinds: each such kind parses them on top of _PARSERS.
_KIND_PARSERS: Final[dict[RecordKind, dict[int, _Parser]]] = {
    RecordKind.PROC_START: {
        **_PARSERS,
        FieldTag.CAPABILITIES: _capabilities,
        FieldTag.LD_PRELOAD: _ld_preload,
        FieldTag.LD_LIBRARY_PATH: _ld_library_path,
    },
    RecordKind.CREDENTIALS: {**_PARSERS, FieldTag.CAPABILITIES: _capabilities},
    RecordKind.LIBRARY_LOAD: {**_PARSERS, FieldTag.REQUESTED: _requested, FieldTag.LIB_FLAGS: _lib_flags},
    RecordKind.UNSAFE_CALL: {**_PARSERS, FieldTag.CALL_SITE: _call_site},
    RecordKind.CRYPTO: {
        **_PARSERS,
        FieldTag.CALL_SITE: _call_site,
        FieldTag.ALGORITHM: _algorithm,
        FieldTag.PROTOCOL: _protocol,
        FieldTag.LIBRARY: _library,
        FieldTag.PURPOSE: _purpose,
    },
    RecordKind.COVERAGE_GAP: {**_PARSERS, FieldTag.GAP_REASONS: _gap_reasons},
    RecordKind.MEMORY_PROTECT: {
        **_PARSERS,
        FieldTag.PROTECTION: _protection,
        FieldTag.MAP_FLAGS: _map_flags,
        FieldTag.LENGTH: _length,
    },
}
# Decoded addresses, shared (SockAddr is immutable): REPEAT summaries and busy services send the
# same few addresses over and over.
_SOCKADDR_CACHE: Final[dict[bytes, SockAddr]] = {}
_SOCKADDR_CACHE_SIZE: Final = 4096


def decode(buf: bytes | bytearray | memoryview) -> Record:
    """Decodes one record.

    Raises RecordError (and nothing else) when the message is not a valid v1 record: shorter than
    a header, longer than 4096 bytes, wrong magic or version, unknown kind, header length different
    from the message length, a field running past the end, a known field of the wrong size or
    value, or a known field given twice. Unknown field tags are skipped; unknown flag bits kept.
    """
    mv = memoryview(buf)
    if not mv.c_contiguous:
        mv = memoryview(mv.tobytes())
    elif mv.ndim != 1 or mv.format != "B":
        mv = mv.cast("B")
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

    fields = _RecordBuilder(record_kind, _FLAG_VALUES[flags] if flags < 16 else RecordFlag(flags))
    fields.pid = pid
    fields.ppid = ppid
    fields.tid = tid
    fields.count = count
    fields.time_ns = time_ns
    fields.dropped = dropped
    fields.seq = seq
    seen = 0
    off = HEADER_SIZE
    unpack_field = _FIELD.unpack_from
    parsers = _KIND_PARSERS.get(record_kind, _PARSERS)
    while off < n:
        if n - off < 4:
            raise RecordError("field_overrun", f"{n - off} stray bytes at offset {off}")
        tag, flen = unpack_field(mv, off)
        off += 4
        end = off + flen
        if end > n:
            raise RecordError("field_overrun", f"field {tag} claims {flen} bytes, {n - off} remain")
        parse = parsers.get(tag)
        if parse is not None:
            bit = 1 << tag
            if seen & bit:
                raise RecordError("duplicate_field", f"field {FieldTag(tag).name} appears twice")
            seen |= bit
            parse(fields, mv, off, flen)
        off = end
    return fields.build()
