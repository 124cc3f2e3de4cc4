"""The intake on a real SOCK_SEQPACKET socket, fed with records built byte by byte.

Record format v1: a 40-byte little-endian header (magic u16 @0, version u8 @2, kind u8 @3,
length u16 @4, flags u16 @6, pid u32 @8, ppid u32 @12, tid u32 @16, count u32 @20,
time_ns u64 @24, dropped u32 @32, seq u32 @36), then fields of tag u16, length u16, body.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import random
import resource
import socket
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from helpers import eventually

from telltale.nodeagent import workload as descriptor
from telltale.nodeagent.attribution import ProcFS
from telltale.nodeagent.batcher import U64_MAX, Counters
from telltale.nodeagent.intake import (
    ACCEPT_RETRY_S,
    MAX_PROCESSES_PER_CONNECTION,
    EventSink,
    Intake,
    Workloads,
    accept_patiently,
)
from telltale.procutil import raise_open_file_limit
from telltale.v1 import common_pb2

try:
    from telltale._native import _records as native_records
except ImportError:  # not built: only the Python path is tested
    native_records = None  # type: ignore[assignment]

# Kinds, flags and field tags of format v1, spelled out rather than imported from the decoder.
PROC_START, EXEC, CONNECT, BIND, LISTEN = 1, 2, 3, 4, 5
REPEAT = 1
EXE, ARGV, CWD, CREDS, SOCKADDR, RESULT, SOCKINFO, BACKLOG, PATH, VARIANT, WORKLOAD, CHILD_PID = range(1, 13)

T0 = 1_750_000_000_000_000_000
SHOP = common_pb2.Workload(id="w-shop", application="shop", component="api")


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


_PATHS = [
    pytest.param(False, id="python"),
    pytest.param(
        True,
        id="native",
        marks=pytest.mark.skipif(native_records is None, reason="telltale._native._records is not built"),
    ),
]


@pytest.fixture(autouse=True, params=_PATHS)
def native(request: pytest.FixtureRequest) -> bool:
    """Every intake test runs on both decoding paths; start_intake picks this one up."""
    global _NATIVE  # noqa: PLW0603
    _NATIVE = bool(request.param)
    return _NATIVE


_NATIVE = False


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
    *,
    pid: int = 1000,
    ppid: int = 1,
    workload: common_pb2.Workload | None = SHOP,
    dropped: int = 0,
    seq: int = 0,
) -> bytes:
    fields = [
        fld(EXE, b"/usr/bin/app"),
        fld(ARGV, b"app\0--port\x008080\0"),
        fld(CWD, b"/srv"),
        fld(CREDS, struct.pack("<6I", 1000, 1000, 1000, 100, 100, 100)),
    ]
    if workload is not None:
        fields.append(fld(WORKLOAD, descriptor.encode(workload).encode()))
    return record(PROC_START, *fields, pid=pid, ppid=ppid, dropped=dropped, seq=seq)


def connect(
    *,
    pid: int = 1000,
    ppid: int = 1,
    port: int = 443,
    dropped: int = 0,
    flags: int = 0,
    count: int = 1,
    seq: int = 0,
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
        seq=seq,
    )


@dataclass
class Harness:
    path: Path
    counters: Counters
    workloads: Workloads
    got: list[tuple[common_pb2.Event, common_pb2.Workload | None]] = field(default_factory=list)
    runs: list[tuple[int, str | None]] = field(default_factory=list)  # (events, workload id) per sink call

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


EventCheck = Callable[[common_pb2.Event, common_pb2.Workload | None], None]


class ChildrenOfPeer:
    """A process table in which every pid the tests invent is a live child of the peer (this test
    process, which opens every client connection), or of the parent `tree` names: records are
    believed as they claim and attribution follows `tree`."""

    def __init__(self, tree: dict[int, int] | None = None) -> None:
        self.tree = tree or {}

    def parent(self, pid: int) -> int | None:
        if pid in self.tree:
            return self.tree[pid]
        if pid == os.getpid():
            return os.getppid()
        return 1 if pid == os.getppid() else os.getpid()


async def start_intake(
    nursery: trio.Nursery, tmp_path: Path, sink: EventCheck | None = None, **options: Any
) -> Harness:
    """An intake on tmp_path/agent.sock; its events, parsed, go to `sink` as well as to the harness."""
    harness = Harness(tmp_path / "agent.sock", Counters(), Workloads())

    def collect(events: list[bytes], workload: common_pb2.Workload | None) -> None:
        assert events, "the intake hands over runs of at least one event"
        harness.runs.append((len(events), workload.id if workload else None))
        for data in events:
            event = common_pb2.Event.FromString(data)
            if sink is not None:
                sink(event, workload)
            harness.got.append((event, workload))

    typed: EventSink = collect

    intake = Intake(
        harness.path,
        typed,
        harness.counters,
        harness.workloads,
        **{"native": _NATIVE, "processes": ChildrenOfPeer(), **options},
    )
    await nursery.start(intake.run)
    return harness


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
async def test_the_events_of_one_read_reach_the_sink_in_runs_of_one_workload(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        h = await start_intake(nursery, tmp_path)
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as client:
            client.connect(str(h.path))  # blocking, without yielding: the intake reads all at once
            client.send(connect(port=1))  # before its start record: not attributed
            client.send(b"")  # an empty message inside the read is counted, not an event
            client.send(proc_start())
            for port in range(2, 6):
                client.send(connect(port=port))
            events = await h.wait_events(6)
            assert h.runs == [(1, None), (5, "w-shop")]
            assert [e.workload_id for e in events] == [""] + ["w-shop"] * 5
            assert [e.socket.address.port for e in events if e.HasField("socket")] == [1, 2, 3, 4, 5]
            assert (h.counters.records, h.counters.malformed) == (6, 1)
        nursery.cancel_scope.cancel()


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
async def test_records_after_an_empty_message_in_the_same_read_are_handled(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        h = await start_intake(nursery, tmp_path)
        with await h.client() as client:
            await client.send(proc_start())
            await client.send(b"")
            await client.send(connect(port=1))
            await client.send(connect(port=2))
            events = await h.wait_events(3)
            assert [e.socket.address.port for e in events[1:]] == [1, 2]
            assert h.counters.malformed == 1
            assert h.workloads.active == 1
        nursery.cancel_scope.cancel()


def _handled(counters: Counters, n: int) -> bool:
    return counters.records + counters.malformed == n


def _mixed_stream() -> list[tuple[int, bytes]]:
    """(client number, message): what a few processes of a workload and a stranger might send."""
    exec_ = record(EXEC, fld(PATH, b"/bin/sh"), fld(ARGV, b"sh\0-c\0id\0"), fld(VARIANT, b"\x01"), pid=1000)
    odd_path = record(EXEC, fld(PATH, b"/tmp/\xff\xfe"), fld(VARIANT, b"\x02"), pid=1000)
    listen = record(LISTEN, fld(BACKLOG, struct.pack("<i", 128)), fld(RESULT, bytes(8)), pid=1001, ppid=1000)
    return [
        (0, proc_start(pid=1000, seq=1)),
        (0, connect(pid=1000, seq=2)),
        (0, exec_),
        (0, record(CONNECT, magic=0x5455)),
        (0, odd_path),
        (0, connect(pid=1000, dropped=3, seq=9, flags=REPEAT, count=4)),
        (1, listen),
        (1, connect(pid=1001, ppid=1000, port=80)),
        (1, proc_start(pid=1001, ppid=1000, workload=None, seq=1)),
        (1, connect(pid=1001, ppid=1000, port=81)),
        (0, b""),
        (2, connect(pid=3000, ppid=1, port=22)),
        (2, record(EXEC, fld(VARIANT, b"\x63"), pid=3000)),
        (0, connect(pid=1000, port=8443)),
    ]


@pytest.mark.skipif(native_records is None, reason="telltale._native._records is not built")
@pytest.mark.parametrize("native", [True], ids=["both"])  # one run compares both paths
@trio.testing.trio_test
async def test_the_native_and_python_paths_deliver_the_same_events_and_counts(
    tmp_path: Path, native: bool
) -> None:
    outcomes = []
    for path in (True, False):
        workdir = tmp_path / ("native" if path else "python")
        workdir.mkdir()
        async with trio.open_nursery() as nursery:
            h = await start_intake(nursery, workdir, native=path)
            clients = [await h.client() for _ in range(3)]
            for sent, (n, message) in enumerate(_mixed_stream(), start=1):
                await clients[n].send(message)  # one at a time: connections are read in any order
                await eventually(functools.partial(_handled, h.counters, sent), "the message")
            outcomes.append(
                (
                    sorted(e.SerializeToString(deterministic=True) for e in h.events),
                    sorted((e.workload_id, w.id if w else None) for e, w in h.got),
                    (h.counters.records, h.counters.malformed, h.counters.dropped),
                    dict(h.workloads.by_pid),
                )
            )
            for client in clients:
                client.close()
            nursery.cancel_scope.cancel()
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][2] == (11, 3, 3)


@trio.testing.trio_test
async def test_a_child_connection_without_descriptor_joins_its_parents_workload(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        h = await start_intake(nursery, tmp_path, processes=ChildrenOfPeer({1001: 1000}))
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


@pytest.mark.parametrize(
    "text",
    [b"app=shop", b"id=w1&app=my+shop", b"id=w1&app=shop&component=-api", b"id=w1&app=shop&env=prod%2Feu"],
    ids=["no-id", "bad-app", "bad-component", "bad-env"],
)
@trio.testing.trio_test
async def test_an_invalid_descriptor_leaves_the_events_unattributed(tmp_path: Path, text: bytes) -> None:
    async with trio.open_nursery() as nursery:
        h = await start_intake(nursery, tmp_path)
        with await h.client() as client:
            await client.send(record(PROC_START, fld(WORKLOAD, text)))
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


# ---- bounds: what hostile or heavy input can cost ----------------------------------------------


@trio.testing.trio_test
async def test_a_workload_is_forgotten_when_its_last_connection_closes(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        h = await start_intake(nursery, tmp_path, processes=ChildrenOfPeer({1001: 1000}))
        for n in range(50):  # short-lived workloads, one after the other
            with await h.client() as client:
                await client.send(
                    proc_start(pid=2000 + n, workload=common_pb2.Workload(id=f"w{n}", application="a"))
                )
                await h.wait_events(n + 1)
        await eventually(lambda: h.workloads.active == 0, "every connection to be closed")
        assert (h.workloads.by_id, h.workloads.connections, h.workloads.by_pid) == ({}, {}, {})

        parent, child = await h.client(), await h.client()
        with parent:
            with child:
                await parent.send(proc_start(pid=1000))
                await h.wait_events(51)
                await child.send(connect(pid=1001, ppid=1000))  # joins its parent's workload
                await h.wait_events(52)
                assert h.workloads.connections == {"w-shop": 2}
            await eventually(lambda: h.workloads.connections == {"w-shop": 1}, "the child to be gone")
            assert h.workloads.by_id == {"w-shop": SHOP}, "the parent's connection still holds it"
            assert h.workloads.by_pid == {1000: "w-shop"}
        await eventually(lambda: h.workloads.active == 0, "the parent to be gone")
        assert (h.workloads.by_id, h.workloads.connections, h.workloads.by_pid) == ({}, {}, {})
        assert h.workloads.uids == {}
        nursery.cancel_scope.cancel()


@trio.testing.trio_test
async def test_a_connection_tracks_a_bounded_number_of_processes_and_its_records_still_flow(
    tmp_path: Path,
) -> None:
    async with trio.open_nursery() as nursery:
        h = await start_intake(nursery, tmp_path)
        with await h.client() as client:
            await client.send(proc_start(pid=1000))
            for pid in range(1001, 1501):  # far more pids than one process and its vfork children
                await client.send(connect(pid=pid, ppid=1000))
            await client.send(proc_start(pid=7000, ppid=1000))
            events = await h.wait_events(502)
            assert all(e.workload_id == "w-shop" for e in events), "untracked pids are still attributed"
            assert [e.process.pid for e in events[1:501]] == list(range(1001, 1501))
            assert events[-1].process.exe == "/usr/bin/app", "an untracked start record keeps its details"
            assert len(h.workloads.by_pid) == MAX_PROCESSES_PER_CONNECTION
            assert 1000 in h.workloads.by_pid
            assert 7000 not in h.workloads.by_pid
        await eventually(lambda: h.workloads.active == 0, "the connection to be closed")
        assert h.workloads.by_pid == {}
        nursery.cancel_scope.cancel()


@trio.testing.trio_test
async def test_the_drops_one_record_credits_are_bounded_by_its_seq_advance(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        h = await start_intake(nursery, tmp_path)
        with await h.client() as client:
            await client.send(proc_start(pid=1000, seq=1))
            await client.send(connect(pid=1000, seq=5, dropped=1000))  # seqs 2-4 could be lost: at most 4
            await client.send(connect(pid=1000, seq=6, dropped=0xFFFFFFFF))  # at most 1 more
            await client.send(connect(pid=1000, seq=7, dropped=0xFFFFFFFF))  # no increase
            await h.wait_events(4)
            assert h.counters.dropped == 5
            for _ in range(5):  # a forger restarting its process over and over
                await client.send(proc_start(pid=1000, seq=1))
                await client.send(connect(pid=1000, seq=2, dropped=0xFFFFFFFF))
            await h.wait_events(14)
            assert h.counters.dropped == 10
            assert h.counters.unsent_dropped == 10
        nursery.cancel_scope.cancel()


@trio.testing.trio_test
async def test_forged_drop_counts_saturate_the_counters(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        h = await start_intake(nursery, tmp_path)
        h.counters.count_dropped(U64_MAX - 10)
        with await h.client() as client:
            for pid in range(1, 6):  # seq unknown (0): only saturation bounds the totals
                await client.send(connect(pid=pid, dropped=0xFFFFFFFF))
            await h.wait_events(5)
        assert (h.counters.dropped, h.counters.unsent_dropped) == (U64_MAX, U64_MAX)
        nursery.cancel_scope.cancel()


@trio.testing.trio_test
async def test_connections_beyond_the_cap_are_closed_counted_and_serving_goes_on(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        h = await start_intake(nursery, tmp_path, max_connections=2)
        first, second = await h.client(), await h.client()
        with first, second:
            await first.send(proc_start(pid=1000))
            await second.send(proc_start(pid=1001))
            await h.wait_events(2)
            extra = [await h.client() for _ in range(3)]
            await eventually(lambda: h.counters.refused_connections == 3, "three refusals")
            for sock in extra:
                with sock, trio.fail_after(10):
                    assert await sock.recv(64) == b"", "the agent closed it"
            await first.send(connect(pid=1000))
            await h.wait_events(3)
        await eventually(lambda: h.workloads.active == 0, "both connections to be closed")
        with await h.client() as late:
            await late.send(
                proc_start(pid=3000, workload=common_pb2.Workload(id="w-late", application="late"))
            )
            events = await h.wait_events(4)
            assert events[-1].workload_id == "w-late"
        assert h.counters.refused_connections == 3
        nursery.cancel_scope.cancel()


@trio.testing.trio_test
async def test_an_unexpected_error_closes_only_that_connection(tmp_path: Path) -> None:
    def buggy(event: common_pb2.Event, workload: common_pb2.Workload | None) -> None:
        if event.process.pid == 666:
            raise RuntimeError("a bug in handling this record")

    async with trio.open_nursery() as nursery:
        h = await start_intake(nursery, tmp_path, sink=buggy)
        with await h.client() as victim, await h.client() as bystander:
            await bystander.send(proc_start(pid=1000))
            await h.wait_events(1)
            await victim.send(connect(pid=666))
            with trio.fail_after(10):
                assert await victim.recv(64) == b"", "the agent closed that connection"
            assert h.counters.malformed == 1, "the lost record is counted"
            await bystander.send(connect(pid=1000))
            events = await h.wait_events(2)
            assert events[-1].workload_id == "w-shop"
        nursery.cancel_scope.cancel()


class _ExhaustedListener:
    """accept() fails with EMFILE `failures` times, then returns a real connection."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0
        self.spare, self.conn = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    async def accept(self) -> tuple[trio.socket.SocketType, Any]:
        await trio.lowlevel.checkpoint()
        self.calls += 1
        if self.calls <= self.failures:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return trio.socket.from_stdlib_socket(self.conn), None


@trio.testing.trio_test
async def test_accept_waits_out_descriptor_exhaustion_logging_once(
    clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    listener = _ExhaustedListener(failures=30)
    start = trio.current_time()
    with listener.spare, trio.fail_after(60):
        sock = await accept_patiently(listener)
    with sock:
        assert not sock.getblocking()
    assert listener.calls == 31
    assert trio.current_time() - start == pytest.approx(30 * ACCEPT_RETRY_S)
    messages = [r.getMessage() for r in caplog.records if r.name == "telltale.nodeagent.intake"]
    assert len(messages) == 2, messages
    assert "EMFILE" in messages[0]
    assert "again" in messages[1]


_EXHAUSTED_AGENT = """
import logging, resource, sys
from pathlib import Path
import trio
from telltale.nodeagent.batcher import Counters
from telltale.nodeagent.intake import Intake, Workloads
from telltale.v1.common_pb2 import Event

logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(message)s")
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[2]), resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

async def main() -> None:
    def sink(events: list[bytes], workload: object) -> None:
        for event in events:
            print(Event.FromString(event).workload_id, flush=True)

    intake = Intake(Path(sys.argv[1]), sink, Counters(), Workloads())
    async with trio.open_nursery() as nursery:
        await nursery.start(intake.run)
        print("ready", flush=True)

trio.run(main)
"""


@trio.testing.trio_test
async def test_an_intake_out_of_descriptors_keeps_serving(tmp_path: Path) -> None:
    """A real process whose open file limit is lower than the connections it is offered."""
    path = tmp_path / "agent.sock"
    out, err = bytearray(), bytearray()
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", _EXHAUSTED_AGENT, str(path), "48"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )

    async def collect(stream: trio.abc.ReceiveStream, into: bytearray) -> None:
        while chunk := await stream.receive_some():
            into += chunk

    try:
        async with trio.open_nursery() as nursery:
            assert process.stdout is not None
            assert process.stderr is not None
            nursery.start_soon(collect, process.stdout, out)
            nursery.start_soon(collect, process.stderr, err)
            await eventually(lambda: b"ready" in out, "the intake to listen", within=30)
            with contextlib.ExitStack() as flood:
                for _ in range(80):
                    sock = flood.enter_context(trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET))
                    await sock.connect(str(path))
                await eventually(
                    lambda: b"Too many open files" in err, "the intake to run out of descriptors"
                )
            with trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as late:
                await late.connect(str(path))
                late_workload = common_pb2.Workload(id="w-late", application="late")
                await late.send(proc_start(pid=3000, workload=late_workload))
                await eventually(lambda: b"w-late" in out, "the later record to arrive", within=30)
            assert process.poll() is None, err.decode()
            process.terminate()
    finally:
        with trio.CancelScope(shield=True):
            if process.poll() is None:
                process.kill()
            await process.wait()
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    await stream.aclose()
    assert b"Traceback" not in err, err.decode()


def test_the_soft_open_file_limit_is_raised_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        assert raise_open_file_limit() == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ---- attribution by the kernel's word, not the record's ----------------------------------------


class Tree:
    """A process table holding exactly `tree` (pid -> parent), plus this test process (the peer of
    every client connection) unless `peer_gone`."""

    def __init__(self, tree: dict[int, int], *, peer_gone: bool = False) -> None:
        self.tree = dict(tree)
        if not peer_gone:
            self.tree[os.getpid()] = 1

    def parent(self, pid: int) -> int | None:
        return self.tree.get(pid)


@trio.testing.trio_test
async def test_a_record_naming_a_live_process_outside_the_peers_tree_is_dropped_and_counted(
    tmp_path: Path,
) -> None:
    """pid 1000 is a child of the peer; pid 4000 a live stranger (its parent init); 5000 no process."""
    peer = os.getpid()
    async with trio.open_nursery() as nursery:
        h = await start_intake(nursery, tmp_path, processes=Tree({1000: peer, 4000: 1}))
        with await h.client() as client:
            await client.send(proc_start(pid=1000))
            await client.send(connect(pid=4000, ppid=1000, port=1))  # forged
            await client.send(connect(pid=5000, ppid=1000, port=2))  # gone: believed
            await client.send(connect(pid=1000, port=3))
            events = await h.wait_events(3)
            await eventually(lambda: _handled(h.counters, 4), "every record")
            assert [e.socket.address.port for e in events[1:]] == [2, 3]
            assert (h.counters.records, h.counters.malformed) == (3, 1)
            assert all(e.workload_id == "w-shop" for e in events)
            assert h.workloads.by_pid == {1000: "w-shop"}, "a pid that is no process is not relied on"
        nursery.cancel_scope.cancel()


@trio.testing.trio_test
async def test_once_the_peer_is_gone_its_records_pids_are_taken_but_not_relied_on(tmp_path: Path) -> None:
    """A vfork child re-parented after its parent (the peer) exited can no longer be told from a
    stranger: its record is taken, attributed to the connection's workload, and not tracked."""
    async with trio.open_nursery() as nursery:
        h = await start_intake(nursery, tmp_path, processes=Tree({4000: 1}, peer_gone=True))
        with await h.client() as client:
            await client.send(proc_start(pid=1000))
            await client.send(connect(pid=4000, ppid=1))
            events = await h.wait_events(2)
            assert [e.workload_id for e in events] == ["w-shop", "w-shop"]
            assert h.counters.malformed == 0
            assert 4000 not in h.workloads.by_pid
        nursery.cancel_scope.cancel()


@trio.testing.trio_test
async def test_a_connection_is_not_adopted_by_the_pid_or_parent_a_record_claims(tmp_path: Path) -> None:
    """A connection without descriptor whose records name a workload's process as themselves or as
    their parent stays unattributed when the kernel does not put it in that process's tree."""
    peer = os.getpid()
    async with trio.open_nursery() as nursery:
        h = await start_intake(nursery, tmp_path, processes=Tree({1000: peer, 2001: peer}))
        with await h.client() as workload, await h.client() as stranger:
            await workload.send(proc_start(pid=1000))
            await h.wait_events(1)
            await stranger.send(connect(pid=2001, ppid=1000))  # of the peer's tree, not of 1000's
            await stranger.send(connect(pid=1000, ppid=1))  # 1000 is of the peer's tree: believed
            events = await h.wait_events(3)
            assert [e.workload_id for e in events] == ["w-shop", "", "w-shop"]
            assert h.workloads.connections == {"w-shop": 2}, "the record of 1000 attached it"
        nursery.cancel_scope.cancel()


def test_procfs_reads_the_parent_whatever_the_command_name() -> None:
    """/proc/PID/stat's command name may hold spaces and parentheses; a missing pid is None."""
    assert ProcFS().parent(os.getpid()) == os.getppid()
    assert ProcFS().parent(0) is None


def test_procfs_parses_a_hostile_command_name(tmp_path: Path) -> None:
    (tmp_path / "77").mkdir()
    (tmp_path / "77" / "stat").write_bytes(b"77 (a) S 1 (x) R 42 77 77 0 -1\n")
    (tmp_path / "78").mkdir()
    (tmp_path / "78" / "stat").write_bytes(b"garbage")
    table = ProcFS(tmp_path)
    assert (table.parent(77), table.parent(78), table.parent(79)) == (42, None, None)
