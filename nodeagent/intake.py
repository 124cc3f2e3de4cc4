"""Intake of shim records on the agent's unix SOCK_SEQPACKET socket.

Each workload process holds one connection. A connection's first record is the process-start
record carrying the workload descriptor; later records of the connection belong to that workload.
Readers wait for readability once and then drain the socket without blocking, which is several
times faster than one await per datagram. A malformed record is dropped and counted; it never
ends the connection or the agent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from telltale.nodeagent import workload as workload_descriptor
from telltale.nodeagent.batcher import Counters
from telltale.nodeagent.convert import fill_process, to_event
from telltale.nodeagent.records import RecordError, RecordKind, decode
from telltale.v1 import common_pb2

log = logging.getLogger(__name__)

MAX_RECORD = 4096
MAX_TRACKED_PIDS = 65536
DRAIN_LIMIT = 512  # records read per wake-up before yielding to other tasks
_UCRED = struct.Struct("3i")

EventSink = Callable[[common_pb2.Event, common_pb2.Workload | None], None]


@dataclass
class Workloads:
    """Workloads known to the agent and how many live connections each has."""

    by_id: dict[str, common_pb2.Workload] = field(default_factory=dict)
    connections: dict[str, int] = field(default_factory=dict)
    by_pid: dict[int, str] = field(default_factory=dict)  # pids with a live connection -> workload id
    # pid -> the shim's cumulative drop count last seen; per process, not per connection, since a
    # process that reconnects keeps counting. Bounded: the oldest entries are forgotten.
    shim_drops: OrderedDict[int, int] = field(default_factory=OrderedDict)

    @property
    def active(self) -> int:
        return sum(1 for n in self.connections.values() if n > 0)


@dataclass
class _Connection:
    peer_pid: int
    workload: common_pb2.Workload | None = None
    processes: dict[int, common_pb2.ProcessInfo] = field(default_factory=dict)


def _peer_closed(sock: socket.socket) -> bool:
    """True when the peer has hung up (recv returning b"" is otherwise an empty message)."""
    poller = select.poll()
    poller.register(sock, select.POLLRDHUP | select.POLLHUP)
    return bool(poller.poll(0))


def _peer_pid(sock: socket.socket) -> int:
    try:
        pid, _uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    except OSError:
        return 0
    return int(pid)


class Intake:
    """Accepts shim connections and turns their records into events for `sink`."""

    def __init__(self, path: Path, sink: EventSink, counters: Counters, workloads: Workloads) -> None:
        self.path = path
        self._sink = sink
        self._counters = counters
        self._workloads = workloads

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on `path` (replacing a stale socket file) until cancelled; ready once listening."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        with listener:
            await listener.bind(str(self.path))
            os.chmod(self.path, 0o666)  # workloads of any user report here
            listener.listen(1024)
            task_status.started()
            try:
                async with trio.open_nursery() as nursery:
                    while True:
                        conn, _ = await listener.accept()
                        raw = socket.socket(fileno=conn.detach())
                        raw.setblocking(False)
                        nursery.start_soon(self._serve, raw)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()

    async def _serve(self, sock: socket.socket) -> None:
        conn = _Connection(peer_pid=_peer_pid(sock))
        try:
            with sock:
                while True:
                    await trio.lowlevel.wait_readable(sock)
                    if not self._drain(sock, conn):
                        return
                    await trio.lowlevel.checkpoint()
        finally:
            if conn.workload is not None:
                self._workloads.connections[conn.workload.id] -= 1
                for pid in conn.processes:
                    if self._workloads.by_pid.get(pid) == conn.workload.id:
                        del self._workloads.by_pid[pid]

    def _drain(self, sock: socket.socket, conn: _Connection) -> bool:
        """Read what is queued (up to DRAIN_LIMIT records); False when the peer has gone."""
        for _ in range(DRAIN_LIMIT):
            try:
                data = sock.recv(MAX_RECORD)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not data:
                if _peer_closed(sock):
                    return False
                self._counters.count_malformed()  # an empty message, not the end of the stream
                continue
            self._handle(data, conn)
        return True

    def _handle(self, data: bytes, conn: _Connection) -> None:
        try:
            record = decode(data)
        except RecordError as exc:
            self._counters.count_malformed()
            log.debug("dropped malformed record from pid %d: %s", conn.peer_pid, exc)
            return
        self._counters.records += 1
        if record.kind == RecordKind.PROC_START and record.seq == 1:
            # The first record of a new image or fork child: its drop count starts from zero. A
            # start record on a later connection of the same process carries a higher seq.
            self._workloads.shim_drops.pop(record.pid, None)
        if record.dropped:
            self._count_shim_drops(record.pid, record.dropped)
        if record.kind == RecordKind.PROC_START:
            self._start(record.workload or "", conn)
            process = common_pb2.ProcessInfo()
            fill_process(process, record)
            conn.processes[record.pid] = process
        if conn.workload is None:
            self._adopt(conn, record.pid, record.ppid)
        workload = conn.workload
        if workload is not None and record.pid not in self._workloads.by_pid:
            self._workloads.by_pid[record.pid] = workload.id
            conn.processes.setdefault(record.pid, common_pb2.ProcessInfo(pid=record.pid))
        event = to_event(record, workload.id if workload else "", conn.processes.get(record.pid))
        self._sink(event, workload)

    def _adopt(self, conn: _Connection, pid: int, ppid: int) -> None:
        """Tie a connection that sent no descriptor to the workload of its process or parent.

        A child that shares its parent's memory until exec (vfork, as Python's subprocess does)
        and lost the inherited connection reports on a new one before its own start record.
        """
        for candidate in (pid, ppid, conn.peer_pid):
            workload_id = self._workloads.by_pid.get(candidate)
            if workload_id is not None:
                self._attach(conn, self._workloads.by_id[workload_id])
                return

    def _attach(self, conn: _Connection, workload: common_pb2.Workload) -> None:
        conn.workload = workload
        self._workloads.connections[workload.id] = self._workloads.connections.get(workload.id, 0) + 1

    def _start(self, descriptor: str, conn: _Connection) -> None:
        if conn.workload is not None or not descriptor:
            return
        try:
            decoded = workload_descriptor.decode(descriptor)
        except workload_descriptor.DescriptorError as exc:
            log.warning("pid %d sent an invalid workload descriptor: %s", conn.peer_pid, exc)
            return
        self._attach(conn, self._workloads.by_id.setdefault(decoded.id, decoded))

    def _count_shim_drops(self, pid: int, cumulative: int) -> None:
        """The shim reports its drops cumulatively per process; count only the increase."""
        seen = self._workloads.shim_drops
        previous = seen.get(pid, 0)
        if cumulative > previous:
            self._counters.count_dropped(cumulative - previous)
            seen[pid] = cumulative
            seen.move_to_end(pid)
            if len(seen) > MAX_TRACKED_PIDS:
                seen.popitem(last=False)
