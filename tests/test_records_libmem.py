"""The decoder on LIBRARY_LOAD and MEMORY_PROTECT records, capset's CAPABILITIES and the loader
environment of PROC_START, built by hand (independently of the shim); and their conversion."""

from __future__ import annotations

import struct

import pytest
from recordkit import fld, reason, rec

from telltale.nodeagent.convert import to_event
from telltale.nodeagent.records import ExecVariant, FieldTag, LibraryFlag, RecordKind, decode
from telltale.v1 import common_pb2

T = FieldTag
RWX = 7
CAPS = struct.pack("<3Q", 1 << 40 | 1 << 12, 2**64 - 1, 0)


def test_library_load_fields() -> None:
    """PATH, LIB_FLAGS bits, REQUESTED text and RESULT of a dlopen."""
    r = decode(
        rec(
            fld(T.RESULT, struct.pack("<ii", 0, 0)),
            fld(T.LIB_FLAGS, b"\x02"),
            fld(T.PATH, b"/tmp/p/libx.so"),
            fld(T.REQUESTED, b"./p/libx.so"),
            kind=RecordKind.LIBRARY_LOAD,
        )
    )
    assert (r.kind, r.path, r.requested, r.lib_flags, r.result) == (
        RecordKind.LIBRARY_LOAD,
        "/tmp/p/libx.so",
        "./p/libx.so",
        LibraryFlag.WRITABLE_DIR,
        (0, 0),
    )
    start = decode(
        rec(fld(T.LIB_FLAGS, b"\x03"), fld(T.PATH, b"/lib/libc.so.6"), kind=RecordKind.LIBRARY_LOAD)
    )
    assert start.lib_flags == LibraryFlag.AT_START | LibraryFlag.WRITABLE_DIR
    assert decode(rec(fld(T.REQUESTED, b"r" * 1024), kind=RecordKind.LIBRARY_LOAD)).requested == "r" * 1024


def test_memory_protect_fields() -> None:
    """PROTECTION and MAP_FLAGS are i32, LENGTH u64; FUNCTION as for other kinds."""
    r = decode(
        rec(
            fld(T.RESULT, struct.pack("<ii", -1, 12)),
            fld(T.FUNCTION, b"mmap"),
            fld(T.PROTECTION, struct.pack("<i", RWX)),
            fld(T.MAP_FLAGS, struct.pack("<i", -2)),
            fld(T.LENGTH, struct.pack("<Q", 2**64 - 1)),
            kind=RecordKind.MEMORY_PROTECT,
        )
    )
    assert (r.function, r.protection, r.map_flags, r.length, r.result) == (
        "mmap",
        RWX,
        -2,
        2**64 - 1,
        (-1, 12),
    )


def test_capabilities_of_capset_and_process_start() -> None:
    """CAPABILITIES is three u64 sets: effective, permitted, inheritable."""
    capset = decode(rec(fld(T.FUNCTION, b"capset"), fld(T.CAPABILITIES, CAPS), kind=RecordKind.CREDENTIALS))
    assert capset.capabilities == (1 << 40 | 1 << 12, 2**64 - 1, 0)
    start = decode(rec(fld(T.CAPABILITIES, CAPS), kind=RecordKind.PROC_START))
    assert start.capabilities == capset.capabilities


@pytest.mark.parametrize(
    ("body", "entries"),
    [
        (b"/opt/a.so\0", ("/opt/a.so",)),
        (b"/opt/a.so\0libb.so\0", ("/opt/a.so", "libb.so")),
        (b"/opt/a.so\0/cut", ("/opt/a.so", "/cut")),
    ],
)
def test_ld_preload_splitting(body: bytes, entries: tuple[str, ...]) -> None:
    assert decode(rec(fld(T.LD_PRELOAD, body), kind=RecordKind.PROC_START)).ld_preload == entries


@pytest.mark.parametrize(
    ("body", "entries"),
    [
        (b"/opt/lib", ("/opt/lib",)),
        (b"/a::/b", ("/a", "", "/b")),
        (b"/a;lib:", ("/a", "lib", "")),
    ],
)
def test_ld_library_path_is_split_like_the_loader_does(body: bytes, entries: tuple[str, ...]) -> None:
    """Entries are separated by ':' or ';'; an empty one (the current directory) is kept."""
    assert decode(rec(fld(T.LD_LIBRARY_PATH, body), kind=RecordKind.PROC_START)).ld_library_path == entries


def test_system_and_popen_variants() -> None:
    for value, variant in ((12, ExecVariant.SYSTEM), (13, ExecVariant.POPEN)):
        r = decode(rec(fld(T.VARIANT, bytes([value])), fld(T.ARGV, b"sh\0-c\0id\0"), kind=RecordKind.EXEC))
        assert (r.variant, r.argv) == (variant, ("sh", "-c", "id"))


@pytest.mark.parametrize(
    "tag", [T.REQUESTED, T.LIB_FLAGS, T.PROTECTION, T.MAP_FLAGS, T.LENGTH, T.CAPABILITIES, T.LD_PRELOAD]
)
def test_new_tags_are_unknown_in_other_kinds(tag: FieldTag) -> None:
    """Tags 28-35 belong to the kinds that carry them; elsewhere, malformed or repeated, they are
    skipped like any unknown tag."""
    r = decode(rec(fld(tag, b"\xff"), fld(tag, b""), kind=RecordKind.CONNECT))
    assert r.kind == RecordKind.CONNECT
    assert (r.requested, r.lib_flags, r.protection, r.length, r.capabilities, r.ld_preload) == (None,) * 6


LIB = RecordKind.LIBRARY_LOAD
MEM = RecordKind.MEMORY_PROTECT
START = RecordKind.PROC_START


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (rec(fld(T.LIB_FLAGS, b""), kind=LIB), "bad_field"),
        (rec(fld(T.LIB_FLAGS, b"\x01\x00"), kind=LIB), "bad_field"),
        (rec(fld(T.LIB_FLAGS, b"\x04"), kind=LIB), "bad_field"),
        (rec(fld(T.REQUESTED, b"r" * 1025), kind=LIB), "bad_field"),
        (rec(fld(T.REQUESTED, b"a"), fld(T.REQUESTED, b"b"), kind=LIB), "duplicate_field"),
        (rec(fld(T.PROTECTION, b"\0" * 3), kind=MEM), "bad_field"),
        (rec(fld(T.MAP_FLAGS, b"\0" * 8), kind=MEM), "bad_field"),
        (rec(fld(T.LENGTH, b"\0" * 4), kind=MEM), "bad_field"),
        (rec(fld(T.LENGTH, b"\0" * 8), fld(T.LENGTH, b"\0" * 8), kind=MEM), "duplicate_field"),
        (rec(fld(T.CAPABILITIES, CAPS[:16]), kind=RecordKind.CREDENTIALS), "bad_field"),
        (rec(fld(T.CAPABILITIES, CAPS + b"\0"), kind=START), "bad_field"),
        (rec(fld(T.LD_PRELOAD, b""), kind=START), "bad_field"),
        (rec(fld(T.LD_PRELOAD, b"\0"), kind=START), "bad_field"),
        (rec(fld(T.LD_PRELOAD, b"/a.so\0\0/b.so\0"), kind=START), "bad_field"),
        (rec(fld(T.LD_PRELOAD, b"x" * 1025), kind=START), "bad_field"),
        (rec(fld(T.LD_LIBRARY_PATH, b""), kind=START), "bad_field"),
        (rec(fld(T.LD_LIBRARY_PATH, b"/" * 1025), kind=START), "bad_field"),
        (rec(fld(T.VARIANT, b"\x0e"), kind=RecordKind.EXEC), "bad_field"),
        (rec(fld(T.PATH, b"/x"), fld(T.LIB_FLAGS, b"\x01"), fld(T.PATH, b"/y"), kind=LIB), "duplicate_field"),
    ],
)
def test_malformed_new_fields_are_rejected(raw: bytes, why: str) -> None:
    assert reason(raw) == why


# ---- conversion --------------------------------------------------------------------------------


def test_library_and_memory_details() -> None:
    lib = to_event(
        decode(
            rec(
                fld(T.LIB_FLAGS, b"\x02"),
                fld(T.PATH, b"/tmp/p/libx.so"),
                fld(T.REQUESTED, b"libx.so"),
                fld(T.RESULT, struct.pack("<ii", 0, 0)),
                kind=LIB,
            )
        ),
        "w-1",
        None,
    )
    assert lib.kind == common_pb2.EVENT_KIND_LIBRARY_LOAD
    assert lib.library == common_pb2.LibraryDetail(
        path="/tmp/p/libx.so", at_start=False, writable_dir=True, requested="libx.so"
    )
    assert lib.result.known
    assert lib.result.error_number == 0
    empty = to_event(decode(rec(kind=LIB)), "w-1", None)
    assert empty.WhichOneof("detail") == "library"
    mem = to_event(
        decode(
            rec(
                fld(T.FUNCTION, b"mprotect"),
                fld(T.PROTECTION, struct.pack("<i", RWX)),
                fld(T.LENGTH, struct.pack("<Q", 4096)),
                kind=MEM,
            )
        ),
        "w-1",
        None,
    )
    assert mem.kind == common_pb2.EVENT_KIND_MEMORY_PROTECT
    assert mem.memory == common_pb2.MemoryDetail(function="mprotect", protection=RWX, flags=0, length=4096)


def test_capset_and_start_capabilities_and_loader_environment() -> None:
    capset = to_event(
        decode(rec(fld(T.FUNCTION, b"capset"), fld(T.CAPABILITIES, CAPS), kind=RecordKind.CREDENTIALS)),
        "w-1",
        None,
    )
    assert (capset.credentials.function, capset.credentials.capabilities_effective) == (
        "capset",
        1 << 40 | 1 << 12,
    )
    assert capset.credentials.capabilities_permitted == 2**64 - 1
    start = to_event(
        decode(
            rec(
                fld(T.CAPABILITIES, CAPS),
                fld(T.LD_PRELOAD, b"/tmp/evil.so\0"),
                fld(T.LD_LIBRARY_PATH, b"/opt/lib::lib"),
                kind=START,
            )
        ),
        "w-1",
        None,
    )
    p = start.process
    assert (p.capabilities_effective, p.capabilities_permitted) == (1 << 40 | 1 << 12, 2**64 - 1)
    assert (list(p.ld_preload), list(p.ld_library_path)) == (["/tmp/evil.so"], ["/opt/lib", "", "lib"])
    shell = to_event(
        decode(rec(fld(T.VARIANT, b"\x0c"), fld(T.PATH, b"/bin/sh"), kind=RecordKind.EXEC)), "w", None
    )
    assert shell.exec.variant == common_pb2.EXEC_VARIANT_SYSTEM
