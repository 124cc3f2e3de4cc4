"""Intake of shim records on the agent's unix SOCK_SEQPACKET socket.

Each workload process holds one connection. A connection's first record is the process-start
record carrying the workload descriptor; later records of the connection belong to that workload.
Readers wait for readability once and then drain the socket without blocking, which is several
times faster than one await per datagram. When the native extension telltale._native._records is
built, a drain is one call that reads a batch of messages (recvmmsg) and turns each record into
serialized Event bytes; the records it does not handle (process starts, anything invalid or unusual)
come back as raw messages and take the Python path (records.decode, convert.to_event), which stays
the reference: both paths give equal events and count the same records as malformed. Either way
events reach the sink serialized, in runs of one workload per wake-up, so that nothing on the way
to the spool handles an event as a Python object.

Records are attributed by what the kernel says, not by what they claim. The kernel gives each
connection its peer's pid and uid (SO_PEERCRED); a record's pid is believed only when it is that
pid or one of its descendants (a vfork child writes on its parent's connection), as /proc shows
them, or when that cannot be told any more (no process has that pid: a child that exited before
its record was read; or the peer has exited, re-parenting its children); only pids found in the
peer's tree are relied on for attribution. A record naming a live process outside the tree of the
live peer is forged: dropped and counted as malformed.
A connection that sends no workload descriptor joins the workload of the closest process, on the
kernel's chain from the record's process up through the peer's ancestors, that a connection of a
workload tracks. A descriptor naming a workload that is already live is accepted only from a
process of its tree or of the same user as one of its processes; any other claim is refused
(counted as malformed) and leaves the connection unattributed. What a same-user process can still
do is in docs/hostile-input.md.

Nothing a peer sends ends the intake or the agent: a record that does not decode is dropped and
counted as malformed and the connection keeps being read; an invalid workload descriptor leaves
the connection unattributed; drop counts a record claims are bounded and the totals saturate; and
a record the agent fails to handle (a bug) closes that one connection, logged and counted. Memory
stays bounded whatever the input: at most `max_connections` connections are served (more are
closed at once and counted), each tracks at most MAX_PROCESSES_PER_CONNECTION processes, and a
workload is forgotten when its last connection closes. Running out of descriptors or memory in
accept() is waited out, as trio's serve_listeners does.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import trio

from telltale.nodeagent import workload as workload_descriptor
from telltale.nodeagent.attribution import ProcessTable, ProcFS, chain, of_peer_tree
from telltale.nodeagent.batcher import Counters
from telltale.nodeagent.convert import event_prefix, fill_process, to_event
from telltale.nodeagent.records import RecordError, RecordKind, decode
from telltale.v1 import common_pb2

try:
    from telltale._native import _records as native_records
except ImportError:  # not built: the Python path serves alone
    native_records = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

MAX_RECORD = 4096
MAX_TRACKED_PIDS = 65536
MAX_CONNECTIONS = 8192
# A real connection carries one process plus the vfork children that report on it before exec.
MAX_PROCESSES_PER_CONNECTION = 64
DRAIN_LIMIT = 512  # records read per wake-up before yielding to other tasks
# accept() failing for lack of descriptors or memory: wait and retry (as trio's serve_listeners).
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_RETRY_S = 0.1
# accept() failing because of the one pending connection: skip it.
_ACCEPT_IGNORABLE_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})
_UCRED = struct.Struct("3i")
# Per connection, how many pids found to be of the peer's tree, or forged, are remembered.
MAX_JUDGED_PIDS = 256

# Where events go: a run of serialized telltale.v1.Event messages, in arrival order, all referring
# to one workload (None: unattributed). The list is the sink's to keep. The native path's events are
# a serialized prefix followed by the rest (protobuf merges repeated parts when parsing): parse them,
# never compare bytes. An exception from the sink closes the connection whose records it was given.
EventSink = Callable[[list[bytes], common_pb2.Workload | None], None]


class Listener(Protocol):
    """What `accept_patiently` needs of a listening socket."""

    async def accept(self) -> tuple[trio.socket.SocketType, Any]: ...


async def accept_patiently(listener: Listener) -> socket.socket:
    """The next connection, as a non-blocking socket.

    Waits out a lack of descriptors or memory (ACCEPT_CAPACITY_ERRNOS), retrying every
    ACCEPT_RETRY_S and logging once per episode; skips a connection that vanished before it was
    accepted; other errors propagate.
    """
    exhausted = False
    while True:
        try:
            conn, _ = await listener.accept()
        except OSError as exc:
            if exc.errno in _ACCEPT_IGNORABLE_ERRNOS:
                continue
            if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                raise
            if not exhausted:
                exhausted = True
                log.error(
                    "accepting shim connections failed with %s (%s); retrying every %.1fs",
                    errno.errorcode[exc.errno],
                    os.strerror(exc.errno),
                    ACCEPT_RETRY_S,
                )
            await trio.sleep(ACCEPT_RETRY_S)
            continue
        if exhausted:
            log.warning("accepting shim connections again")
        raw = socket.socket(fileno=conn.detach())
        raw.setblocking(False)
        return raw


@dataclass
class Workloads:
    """Workloads with a live connection, and how many live connections each has.

    A workload is forgotten when its last connection closes; `by_pid` only names workloads of
    `by_id`, and only pids that a live connection of that workload tracks.
    """

    by_id: dict[str, common_pb2.Workload] = field(default_factory=dict)
    connections: dict[str, int] = field(default_factory=dict)
    by_pid: dict[int, str] = field(default_factory=dict)  # pids with a live connection -> workload id
    # pid -> (the shim's cumulative drop count last seen, the seq of that record or 0 when unknown);
    # per process, not per connection, since a process that reconnects keeps counting. Bounded:
    # the oldest entries are forgotten.
    shim_drops: OrderedDict[int, tuple[int, int]] = field(default_factory=OrderedDict)
    # workload id -> the uids of its live connections' peers, with how many connections each.
    uids: dict[str, dict[int, int]] = field(default_factory=dict)

    @property
    def active(self) -> int:
        return len(self.connections)


@dataclass
class _Connection:
    peer_pid: int  # from the kernel (SO_PEERCRED); 0 when unknown
    peer_uid: int = -1  # from the kernel; -1 when unknown
    workload: common_pb2.Workload | None = None
    # Record pids judged so far (at most MAX_JUDGED_PIDS): True when of the peer's tree.
    judged: dict[int, bool] = field(default_factory=dict)
    # The peer and its ancestors (attribution.chain), read once: looked up on every record until the
    # connection is attributed.
    peer_chain: list[int] | None = None
    # At most MAX_PROCESSES_PER_CONNECTION entries.
    processes: dict[int, common_pb2.ProcessInfo] = field(default_factory=dict)
    # convert.event_prefix of the workload and of `processes[pid]`, by pid (key _UNTRACKED: a pid
    # without an entry in `processes`); at most MAX_PROCESSES_PER_CONNECTION + 1 entries. Emptied
    # when the workload changes; an entry is dropped when its process entry is replaced.
    prefixes: dict[int, bytes] = field(default_factory=dict)


_UNTRACKED = -1


def _peer_closed(sock: socket.socket) -> bool:
    """True when the peer has hung up (recv returning b"" is otherwise an empty message)."""
    poller = select.poll()
    poller.register(sock, select.POLLRDHUP | select.POLLHUP)
    return bool(poller.poll(0))


def _peer(sock: socket.socket) -> tuple[int, int]:
    """The peer's pid and uid as the kernel recorded them at connect(); (0, -1) if unknown."""
    try:
        pid, uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    except OSError:
        return 0, -1
    return int(pid), int(uid)


class Intake:
    """Accepts shim connections and turns their records into events for `sink`.

    At most `max_connections` connections are served at once; beyond that a connection is
    accepted and closed at once, and counted in `counters.refused_connections`.

    `native` chooses the decoding path: None uses the native extension when it is built, False
    never does, True requires it (RuntimeError here when it is not built). `processes` is where
    attribution looks processes up (/proc by default).
    """

    def __init__(
        self,
        path: Path,
        sink: EventSink,
        counters: Counters,
        workloads: Workloads,
        *,
        max_connections: int = MAX_CONNECTIONS,
        native: bool | None = None,
        processes: ProcessTable | None = None,
    ) -> None:
        if native and native_records is None:
            raise RuntimeError("the native record decoder (telltale._native._records) is not built")
        self.path = path
        self.native = native_records is not None if native is None else native
        self.max_connections = max_connections
        self._sink = sink
        self._counters = counters
        self._workloads = workloads
        self._processes = processes if processes is not None else ProcFS()
        self._open = 0
        self._refusing = False

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
                        sock = await accept_patiently(listener)
                        if self._open >= self.max_connections:
                            self._refuse(sock)
                            continue
                        self._refusing = False
                        self._open += 1
                        nursery.start_soon(self._serve, sock)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()

    def _refuse(self, sock: socket.socket) -> None:
        sock.close()
        self._counters.count_refused_connection()
        if not self._refusing:
            self._refusing = True
            log.error(
                "%d shim connections are open, the most served at once; closing new ones",
                self._open,
            )

    async def _serve(self, sock: socket.socket) -> None:
        pid, uid = _peer(sock)
        conn = _Connection(peer_pid=pid, peer_uid=uid)
        try:
            with sock:
                drain = self._drain_native if self.native else self._drain
                while True:
                    await trio.lowlevel.wait_readable(sock)
                    if not drain(sock, conn):
                        return
                    await trio.lowlevel.checkpoint()
        except Exception:
            # A bug must cost this connection only (the shim reconnects), never the agent.
            self._counters.count_malformed()
            log.exception("closed the connection of pid %d after an unexpected error", conn.peer_pid)
        finally:
            self._open -= 1
            self._forget(conn)

    def _forget(self, conn: _Connection) -> None:
        """Release what a closed connection held; the last one of a workload forgets the workload."""
        workload = conn.workload
        if workload is None:
            return
        workloads = self._workloads
        for pid in conn.processes:
            if workloads.by_pid.get(pid) == workload.id:
                del workloads.by_pid[pid]
        uids = workloads.uids[workload.id]
        if uids[conn.peer_uid] > 1:
            uids[conn.peer_uid] -= 1
        else:
            del uids[conn.peer_uid]
        remaining = workloads.connections[workload.id] - 1
        if remaining:
            workloads.connections[workload.id] = remaining
        else:
            del workloads.connections[workload.id]
            del workloads.by_id[workload.id]
            del workloads.uids[workload.id]

    def _drain(self, sock: socket.socket, conn: _Connection) -> bool:
        """Read what is queued (up to DRAIN_LIMIT records); False when the peer has gone.

        The events are handed to the sink in runs of one workload, once all of a wake-up's records
        have been read; an exception ends the drain, losing them (see `_drain_native`).
        """
        sink = self._sink
        events: list[bytes] = []  # serialized, not yet handed to the sink
        owner = conn.workload  # the workload of `events`: conn.workload, refreshed when it may change
        alive = True
        for _ in range(DRAIN_LIMIT):
            try:
                # One byte more than a record may have: a longer message decodes as too long
                # (malformed, counted) instead of being cut to a length that might pass.
                data = sock.recv(MAX_RECORD + 1)
            except BlockingIOError:
                break
            except OSError:
                alive = False
                break
            if not data:
                if _peer_closed(sock):
                    alive = False
                    break
                self._counters.count_malformed()  # an empty message, not the end of the stream
                continue
            event = self._handle(data, conn)
            if conn.workload is not owner:
                if events:
                    sink(events, owner)
                    events = []
                owner = conn.workload
            if event is not None:
                events.append(event)
        if events:
            sink(events, owner)
        return alive

    def _drain_native(self, sock: socket.socket, conn: _Connection) -> bool:
        """`_drain` through the native extension: the same events, counts and return value.

        Reads up to DRAIN_LIMIT messages in one call. Each event is the cached serialized prefix of
        its process (convert.event_prefix) followed by what the extension encoded: never parsed
        here. Events go to the sink in runs of one workload, in order, after the whole read. An
        exception (from the sink, or a bug) ends the drain: the records already read but not yet
        handed over are lost with the connection, which the caller closes, as the records still
        queued are.
        """
        assert native_records is not None
        items, status = native_records.drain(sock.fileno(), DRAIN_LIMIT)
        counters = self._counters
        by_pid = self._workloads.by_pid
        sink = self._sink
        events: list[bytes] = []  # serialized, not yet handed to the sink
        owner = conn.workload  # the workload of `events`: conn.workload, refreshed when it may change
        closed = False
        records = 0  # encoded records read, counted here at the end whatever happens
        try:
            for item in items:
                if isinstance(item, tuple):
                    pid, _ppid, dropped, seq, body = item
                    if not self._believed(conn, pid):
                        continue
                    records += 1
                    if dropped:
                        self._count_shim_drops(pid, dropped, seq)
                    if owner is None:
                        self._adopt(conn, pid)
                        if conn.workload is not None:
                            if events:
                                sink(events, owner)
                                events = []
                            owner = conn.workload
                    if pid not in by_pid and owner is not None and conn.judged.get(pid):
                        self._track(conn, owner, pid)
                    prefix = conn.prefixes.get(pid)
                    if prefix is None:
                        prefix = self._prefix(conn, pid)
                    events.append(prefix + body)
                elif item is None:
                    # The end of the stream, or an empty message. Records read after it are handled.
                    if closed or _peer_closed(sock):
                        closed = True
                    else:
                        counters.count_malformed()
                else:
                    event = self._handle(item, conn)
                    if conn.workload is not owner:
                        if events:
                            sink(events, owner)
                            events = []
                        owner = conn.workload
                    if event is not None:
                        events.append(event)
        finally:
            counters.records += records  # not sent anywhere: needs no saturation
        if events:
            sink(events, owner)
        return not closed and status != native_records.ERROR

    def _prefix(self, conn: _Connection, pid: int) -> bytes:
        """convert.event_prefix for a record of `pid` on `conn`, cached in `conn.prefixes`."""
        process = conn.processes.get(pid)
        key = pid if process is not None else _UNTRACKED
        prefix = conn.prefixes.get(key)
        if prefix is None:
            prefix = event_prefix(conn.workload.id if conn.workload else "", process)
            conn.prefixes[key] = prefix
        return prefix

    def _handle(self, data: bytes, conn: _Connection) -> bytes | None:
        """Decode one record on the Python path and update the connection's state; the serialized
        event of `conn.workload` (as it is afterwards), or None when the record is malformed."""
        try:
            record = decode(data)
        except RecordError as exc:
            self._counters.count_malformed()
            log.debug("dropped malformed record from pid %d: %s", conn.peer_pid, exc)
            return None
        pid = record.pid
        if not self._believed(conn, pid):
            return None
        self._counters.records += 1  # not sent anywhere: needs no saturation
        if record.kind == RecordKind.PROC_START:
            if record.seq == 1:
                # The first record of a new image or fork child: its drop count starts from zero.
                # A start record on a later connection of the same process carries a higher seq.
                self._note_shim_drops(pid, 0, 1)
            self._start(record.workload or "", conn)
            if pid in conn.processes or len(conn.processes) < MAX_PROCESSES_PER_CONNECTION:
                process = common_pb2.ProcessInfo()
                fill_process(process, record)
                conn.processes[pid] = process
                conn.prefixes.pop(pid, None)
        if record.dropped:
            self._count_shim_drops(pid, record.dropped, record.seq)
        if conn.workload is None:
            self._adopt(conn, pid)
        workload = conn.workload
        if workload is not None and pid not in self._workloads.by_pid and conn.judged.get(pid):
            self._track(conn, workload, pid)
        return to_event(record, workload.id if workload else "", conn.processes.get(pid)).SerializeToString()

    def _track(self, conn: _Connection, workload: common_pb2.Workload, pid: int) -> None:
        """Let later connections of `pid` (or of its children) find `workload`, within the bound."""
        if pid in conn.processes or len(conn.processes) < MAX_PROCESSES_PER_CONNECTION:
            self._workloads.by_pid[pid] = workload.id
            conn.processes.setdefault(pid, common_pb2.ProcessInfo(pid=pid))

    def _believed(self, conn: _Connection, pid: int) -> bool:
        """Whether a record of `pid` may be taken on `conn`; counts and logs a forged one.

        Believed: the peer itself, a live process whose parents lead to the peer (recorded in
        `conn.judged` as True: attribution may rely on it), a pid no live process has (a child
        already gone), or any pid once the peer is gone (neither recorded: attribution never
        relies on them). Forged: a live process outside the tree of the live peer.
        """
        known = conn.judged.get(pid)
        if known is None:
            verdict = of_peer_tree(self._processes, conn.peer_pid, pid)
            if verdict is not None and len(conn.judged) < MAX_JUDGED_PIDS:
                conn.judged[pid] = verdict
            known = verdict is not False
        if not known:
            self._counters.count_malformed()
            log.debug("dropped a record of pid %d from pid %d: not of its tree", pid, conn.peer_pid)
        return known

    def _peer_chain(self, conn: _Connection) -> list[int]:
        if conn.peer_chain is None:
            conn.peer_chain = chain(self._processes, conn.peer_pid)
        return conn.peer_chain

    def _adopt(self, conn: _Connection, pid: int) -> None:
        """Tie a connection that sent no descriptor to the workload of the closest tracked process
        on the kernel's chain from the record's process (when of the peer's tree) up through the
        peer's ancestors. Never by what a record claims: a record naming another workload's pid
        is forged and never gets here.

        A child that shares its parent's memory until exec (vfork, as Python's subprocess does)
        and lost the inherited connection reports on a new one before its own start record.
        """
        by_pid = self._workloads.by_pid
        of_tree = pid != conn.peer_pid and conn.judged.get(pid)
        for candidate in chain(self._processes, pid) if of_tree else self._peer_chain(conn):
            workload_id = by_pid.get(candidate)
            if workload_id is not None:
                self._attach(conn, self._workloads.by_id[workload_id])
                return

    def _attach(self, conn: _Connection, workload: common_pb2.Workload) -> None:
        conn.workload = workload
        conn.prefixes.clear()
        workloads = self._workloads
        workloads.connections[workload.id] = workloads.connections.get(workload.id, 0) + 1
        uids = workloads.uids.setdefault(workload.id, {})
        uids[conn.peer_uid] = uids.get(conn.peer_uid, 0) + 1

    def _may_join(self, conn: _Connection, workload_id: str) -> bool:
        """Whether the peer of `conn` may claim the live workload `workload_id`: it is in the tree
        of a tracked process of that workload, or runs as the user of one of its connections."""
        if conn.peer_uid in self._workloads.uids.get(workload_id, {}):
            return True
        by_pid = self._workloads.by_pid
        return any(by_pid.get(pid) == workload_id for pid in self._peer_chain(conn))

    def _start(self, descriptor: str, conn: _Connection) -> None:
        if conn.workload is not None or not descriptor:
            return
        try:
            decoded = workload_descriptor.decode(descriptor)
        except workload_descriptor.DescriptorError as exc:
            log.warning("pid %d sent an invalid workload descriptor: %s", conn.peer_pid, exc)
            return
        live = self._workloads.by_id.get(decoded.id)
        if live is not None and not self._may_join(conn, decoded.id):
            self._counters.count_malformed()
            log.warning(
                "pid %d (uid %d) claims workload %s of another user's processes: left unattributed",
                conn.peer_pid,
                conn.peer_uid,
                decoded.id,
            )
            return
        if live is None:
            live = self._workloads.by_id[decoded.id] = decoded
        self._attach(conn, live)

    def _count_shim_drops(self, pid: int, dropped: int, seq: int) -> None:
        """The shim reports its drops cumulatively per process; count only the increase.

        A shim counts at most one drop per seq number, so when the seq of this record and of the
        process's previous one are both known, the increase credited is at most their difference.
        """
        previous, previous_seq = self._workloads.shim_drops.get(pid, (0, 0))
        increase = dropped - previous
        if seq and previous_seq:
            increase = min(increase, seq - previous_seq)
        if increase > 0:
            self._counters.count_dropped(increase)
        self._note_shim_drops(pid, max(dropped, previous), max(seq, previous_seq))

    def _note_shim_drops(self, pid: int, cumulative: int, seq: int) -> None:
        seen = self._workloads.shim_drops
        seen[pid] = (cumulative, seq)
        seen.move_to_end(pid)
        if len(seen) > MAX_TRACKED_PIDS:
            seen.popitem(last=False)
