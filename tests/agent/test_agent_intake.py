"""The intake on a real SOCK_SEQPACKET socket, fed with records built byte by byte.

Record format v1: a 40-byte little-endian header (magic u16 @0, version u8 @2, kind u8 @3,
length u16 @4, flags u16 @6, pid u32 @8, ppid u32 @12, tid u32 @16, count u32 @20,
time_ns u64 @24, dropped u32 @32, seq u32 @36), then fields of tag u16, length u16, body.
"""

from __future__ import annotations

import random
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
import trio.testing

from telltale.nodeagent import workload as descriptor
from telltale.nodeagent.batcher import Counters
from telltale.nodeagent.intake import Intake, Workloads
from telltale.v1 import common_pb2

# Kinds, flags and field tags of format v1, spelled out rather than imported from the decoder.
PROC_START, EXEC, CONNECT, BIND, LISTEN = 1, 2, 3, 4, 5
REPEAT = 1
EXE, ARGV, CWD, CREDS, SOCKADDR, RESULT, SOCKINFO, BACKLOG, PATH, VARIANT, WORKLOAD, CHILD_PID = range(1, 13)

T0 = 1_750_000_000_000_000_000
SHOP = common_pb2.Workload(id="w-shop", application="shop", component="api")


def fld(tag: int, body: bytes) -> bytes:
    return struct.pack("<HH", tag, len(body)) + body


def record(
    kind: int,
    *fields: bytes,
    pid: int = 1000,
    ppid: int = 1,
    flags: int = 0,
    count: int = 1,
    dropped: int = 0,
    seq: int = 0,
    magic: int = 0x5454,
    version: int = 1,
    length: int | None = None,
) -> bytes:
    body = b"".join(fields)
    buf = bytearray(40)
    struct.pack_into("<H", buf, 0, magic)
    buf[2] = version
    buf[3] = kind
    struct.pack_into("<H", buf, 4, 40 + len(body) if length is None else length)
    struct.pack_into("<H", buf, 6, flags)
    struct.pack_into("<I", buf, 8, pid)
    struct.pack_into("<I", buf, 12, ppid)
    struct.pack_into("<I", buf, 16, pid)  # tid: the main thread
    struct.pack_into("<I", buf, 20, count)
    struct.pack_into("<Q", buf, 24, T0)
    struct.pack_into("<I", buf, 32, dropped)
    struct.pack_into("<I", buf, 36, seq)
    return bytes(buf) + body


def sockaddr_in(ip: str, port: int) -> bytes:
    return struct.pack("<H", socket.AF_INET) + struct.pack(">H", port) + socket.inet_aton(ip) + bytes(8)


def proc_start(
    *, pid: int = 1000, ppid: int = 1, workload: common_pb2.Workload | None = SHOP, dropped: int = 0
) -> bytes:
    fields = [
        fld(EXE, b"/usr/bin/app"),
        fld(ARGV, b"app\0--port\x008080\0"),
        fld(CWD, b"/srv"),
        fld(CREDS, struct.pack("<6I", 1000, 1000, 1000, 100, 100, 100)),
    ]
    if workload is not None:
        fields.append(fld(WORKLOAD, descriptor.encode(workload).encode()))
    return record(PROC_START, *fields, pid=pid, ppid=ppid, dropped=dropped)


def connect(
    *, pid: int = 1000, ppid: int = 1, port: int = 443, dropped: int = 0, flags: int = 0, count: int = 1
) -> bytes:
    return record(
        CONNECT,
        fld(SOCKADDR, sockaddr_in("10.1.2.3", port)),
        fld(SOCKINFO, struct.pack("<3i", socket.AF_INET, socket.SOCK_STREAM, 6)),
        fld(RESULT, struct.pack("<2i", 0, 0)),
        pid=pid,
        ppid=ppid,
        dropped=dropped,
        flags=flags,
        count=count,
    )


@dataclass
class Harness:
    path: Path
    counters: Counters
    workloads: Workloads
    got: list[tuple[common_pb2.Event, common_pb2.Workload | None]] = field(default_factory=list)

    @property
    def events(self) -> list[common_pb2.Event]:
        return [event for event, _ in self.got]

    async def client(self) -> trio.socket.SocketType:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        await sock.connect(str(self.path))
        return sock

    async def wait_events(self, n: int) -> list[common_pb2.Event]:
        await eventually(lambda: len(self.got) >= n, f"{n} events (have {len(self.got)})")
        return self.events


async def start_intake(nursery: trio.Nursery, tmp_path: Path) -> Harness:
    harness = Harness(tmp_path / "agent.sock", Counters(), Workloads())
    intake = Intake(
        harness.path, lambda e, w: harness.got.append((e, w)), harness.counters, harness.workloads
    )
    await nursery.start(intake.run)
    return harness


async def eventually(predicate: Callable[[], bool], what: str, within: float = 10.0) -> None:
    """Poll `predicate` until it holds; fail after `within` seconds."""
    deadline = trio.current_time() + within
    while trio.current_time() < deadline:
        if predicate():
            return
        await trio.sleep(0.002)
    raise AssertionError(f"timed out waiting for {what}")


@trio.testing.trio_test
async def test_start_then_connect_become_two_events_of_the_workload(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        h = await start_intake(nursery, tmp_path)
        with await h.client() as client:
            await client.send(proc_start())
            await client.send(connect(port=443, flags=REPEAT, count=9))
            start, conn = await h.wait_events(2)
            assert h.counters.records == 2
            assert start.kind == common_pb2.EVENT_KIND_PROCESS_START
            assert conn.kind == common_pb2.EVENT_KIND_CONNECT
            assert [w.id if w else None for _, w in h.got] == ["w-shop", "w-shop"]
            assert h.got[0][1] == SHOP, "the sink gets the decoded descriptor"
            assert (start.workload_id, conn.workload_id) == ("w-shop", "w-shop")
            assert start.process.exe == "/usr/bin/app"
            assert list(start.process.argv) == ["app", "--port", "8080"]
            assert conn.process.exe == "/usr/bin/app", "later events know the process from its start record"
            assert (conn.socket.address.address, conn.socket.address.port) == ("10.1.2.3", 443)
            assert (conn.repeat, conn.count) == (True, 9)
            assert h.workloads.active == 1
            assert h.workloads.by_pid == {1000: "w-shop"}
        await eventually(lambda: h.workloads.active == 0, "the connection to be forgotten")
        assert h.workloads.by_pid == {}
        assert h.workloads.by_id == {}, "a workload is forgotten with its last connection"
        nursery.cancel_scope.cancel()
    assert not h.path.exists(), "the socket file is removed on exit"


@trio.testing.trio_test
async def test_a_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "agent.sock").write_text("left over")
    async with trio.open_nursery() as nursery:
        h = await start_intake(nursery, tmp_path)
        with await h.client() as client:
            await client.send(proc_start())
            await h.wait_events(1)
        nursery.cancel_scope.cancel()


def _valid() -> bytes:
    return connect(port=8443)


def _with_field_overrun() -> bytes:
    body = fld(RESULT, struct.pack("<2i", 0, 0))[:-4] + bytes(2)  # RESULT claims 8 bytes, 2 remain
    return record(CONNECT, body)


MALFORMED = {
    "empty-header": b"\x54\x54\x01",
    "short": _valid()[:39],
    "bad-magic": record(CONNECT, magic=0x5455),
    "bad-version": record(CONNECT, version=2),
    "unknown-kind": record(99),
    "length-says-more": record(CONNECT, fld(RESULT, bytes(8)), length=53),
    "length-says-less": record(CONNECT, fld(RESULT, bytes(8)), length=40),
    "field-overrun": _with_field_overrun(),
    "stray-bytes": record(CONNECT, fld(RESULT, bytes(8)), b"\x05\x00"),
    "bad-field-size": record(CONNECT, fld(RESULT, bytes(7))),
    "duplicate-field": record(CONNECT, fld(BACKLOG, bytes(4)), fld(BACKLOG, bytes(4))),
    "bad-exec-variant": record(EXEC, fld(VARIANT, b"\x63")),
    "oversized": record(CONNECT, fld(PATH, b"x" * 4100)),
}


@pytest.mark.parametrize("bad", MALFORMED.values(), ids=MALFORMED.keys())
@trio.testing.trio_test
async def test_a_malformed_record_is_counted_and_the_connection_keeps_working(
    tmp_path: Path, bad: bytes
) -> None:
    async with trio.open_nursery() as nursery:
        h = await start_intake(nursery, tmp_path)
        with await h.client() as client:
            await client.send(proc_start())
            await client.send(bad)
            await client.send(connect(port=8443))
            events = await h.wait_events(2)
            assert h.counters.malformed == 1
            assert h.counters.unsent_malformed == 1, "the loss is reported with the next batch"
            assert h.counters.records == 2
            assert events[1].kind == common_pb2.EVENT_KIND_CONNECT
            assert events[1].socket.address.port == 8443
            assert events[1].workload_id == "w-shop", "the connection kept its workload"
        nursery.cancel_scope.cancel()


@trio.testing.trio_test
async def test_an_empty_message_is_counted_and_the_connection_keeps_working(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        h = await start_intake(nursery, tmp_path)
        with await h.client() as client:
            await client.send(proc_start())
            await h.wait_events(1)
            await client.send(b"")
            await eventually(
                lambda: h.counters.malformed == 1 or h.workloads.active == 0,
                "the empty message to be handled",
            )
            assert h.counters.malformed == 1
            assert h.workloads.active == 1, "the connection is still open"
        nursery.cancel_scope.cancel()


@trio.testing.trio_test
async def test_a_child_connection_without_descriptor_joins_its_parents_workload(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        h = await start_intake(nursery, tmp_path)
        with await h.client() as parent, await h.client() as child, await h.client() as stranger:
            await parent.send(proc_start(pid=1000))
            await h.wait_events(1)
            await child.send(connect(pid=1001, ppid=1000))
            await h.wait_events(2)
            await stranger.send(connect(pid=2001, ppid=2000))
            events = await h.wait_events(3)
            assert events[1].workload_id == "w-shop"
            assert h.got[1][1] == SHOP
            assert h.workloads.connections["w-shop"] == 2
            assert h.workloads.by_pid[1001] == "w-shop"
            assert events[2].workload_id == "", "a process of no known workload stays unattributed"
            assert h.got[2][1] is None
            assert 2001 not in h.workloads.by_pid
        nursery.cancel_scope.cancel()


@trio.testing.trio_test
async def test_an_invalid_descriptor_leaves_the_events_unattributed(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        h = await start_intake(nursery, tmp_path)
        with await h.client() as client:
            await client.send(record(PROC_START, fld(WORKLOAD, b"app=shop")))  # no id
            await client.send(connect())
            events = await h.wait_events(2)
            assert [e.workload_id for e in events] == ["", ""]
            assert h.counters.malformed == 0, "the record itself was well formed"
            assert h.workloads.by_id == {}
        nursery.cancel_scope.cancel()


@trio.testing.trio_test
async def test_the_shims_cumulative_drop_count_is_counted_once_per_increase(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        h = await start_intake(nursery, tmp_path)
        with await h.client() as client:
            await client.send(proc_start(pid=1000, dropped=0))
            for dropped in (3, 3, 5, 5, 4):  # a lower value (a reordered record) is not a decrease
                await client.send(connect(pid=1000, dropped=dropped))
            await client.send(connect(pid=1001, ppid=1000, dropped=2))  # a forked child counts its own
            await h.wait_events(7)
            assert h.counters.dropped == 7
            assert h.counters.unsent_dropped == 7
        nursery.cancel_scope.cancel()


@trio.testing.trio_test
async def test_a_reconnecting_process_does_not_have_its_drops_counted_again(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        h = await start_intake(nursery, tmp_path)
        with await h.client() as first:
            await first.send(proc_start(pid=1000))
            await first.send(connect(pid=1000, dropped=3))
            await h.wait_events(2)
        await eventually(lambda: h.workloads.active == 0, "the first connection to close")
        with await h.client() as second:  # the same process: its counter was not reset
            await second.send(proc_start(pid=1000, dropped=3))
            await second.send(connect(pid=1000, dropped=4))
            await h.wait_events(4)
            assert h.counters.dropped == 4
        nursery.cancel_scope.cancel()


def _garbage(rng: random.Random) -> bytes:
    """One hostile message: never empty, at most 4200 bytes."""
    shape = rng.randrange(4)
    if shape == 0:  # random bytes
        return rng.randbytes(rng.randint(1, 120))
    if shape == 1:  # a plausible header with random fields
        fields = b"".join(
            struct.pack("<HH", rng.randrange(15), rng.choice([n, n, rng.randrange(64)])) + rng.randbytes(n)
            for n in (rng.randrange(40) for _ in range(rng.randrange(6)))
        )
        length = None if rng.random() < 0.8 else rng.randrange(65536)
        return record(
            rng.randrange(8),
            fields,
            pid=rng.getrandbits(32),
            ppid=rng.getrandbits(32),
            flags=rng.getrandbits(16),
            count=rng.getrandbits(32),
            dropped=rng.getrandbits(32),
            length=length,
        )
    valid = rng.choice(
        [
            proc_start(pid=rng.randrange(1, 50)),
            connect(pid=rng.randrange(1, 50)),
            record(
                EXEC,
                fld(PATH, b"/bin/sh"),
                fld(ARGV, b"sh\0-c\0"),
                fld(VARIANT, b"\x01"),
                fld(CHILD_PID, struct.pack("<I", 7)),
            ),
            record(LISTEN, fld(BACKLOG, struct.pack("<i", 128))),
        ]
    )
    if shape == 2:  # a valid record with a few bytes changed
        buf = bytearray(valid)
        for _ in range(rng.randint(1, 4)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        return bytes(buf)
    return valid[: rng.randint(1, len(valid))]  # a cut-off record


@trio.testing.trio_test
async def test_a_garbage_spewing_client_cannot_crash_the_intake(tmp_path: Path) -> None:
    rng = random.Random(0x7E11)
    batches = [[_garbage(rng) for _ in range(2500)] for _ in range(2)]
    async with trio.open_nursery() as nursery:
        h = await start_intake(nursery, tmp_path)

        async def spew(messages: list[bytes]) -> None:
            with await h.client() as client:
                for message in messages:
                    await client.send(message)

        async with trio.open_nursery() as spewers:
            for messages in batches:
                spewers.start_soon(spew, messages)
        total = sum(len(b) for b in batches)
        await eventually(
            lambda: h.counters.records + h.counters.malformed == total,
            "every message to be decoded or counted",
        )
        assert h.counters.malformed > total // 2
        h.got.clear()
        with await h.client() as client:
            late = common_pb2.Workload(id="w-late", application="late")
            await client.send(proc_start(pid=99_000, workload=late))
            await client.send(connect(pid=99_000))
            events = await h.wait_events(2)
            assert [e.workload_id for e in events] == ["w-late", "w-late"]
        nursery.cancel_scope.cancel()
