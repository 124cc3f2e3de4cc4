"""AgentService: the one bidirectional stream each node agent keeps open.

Per stream: Hello → Welcome; every EventBatch is evaluated on arrival and handed to the replica's
recorder (recorder.py), which records it exactly once together with what every other stream
queued meanwhile, then it is acknowledged, in order; every policy-state change is pushed as a
PolicyUpdate and the node's acknowledgement is recorded (through the recorder too, as are
registration, heartbeats and going offline). While a replica holds a node's stream it keeps a
liveness key for the node on its own lease (NodeLiveness), so the elected replica can mark the
node offline when this one dies without saying goodbye. The node record is only ever written with
compare-and-swap, so a stale stream (the same node reconnected elsewhere) cannot undo what the
live one wrote.

Each stream has a reader, an acknowledger and one writer, the only task that writes to the call.
What the reader or the recorder finds wrong is raised, not sent: the tasks are stopped, the write
in flight is awaited, and only then does the call end with its status (gRPC refuses a status while
a write is in flight). What an agent may send is bounded (check_hello, check_batch).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any, Generic, TypeVar

import aetcd
import grpc
from google.protobuf.message import DecodeError

from telltale.controller import metrics
from telltale.controller.auth import node_identity
from telltale.controller.coverage import gaps_by_workload, record_workload
from telltale.controller.errors import ControllerError, InvalidArgument, status_of
from telltale.controller.ingest import BatchStep, Evaluated, apply_node_state, evaluate, workloads_of
from telltale.controller.policies import PolicyView
from telltale.controller.recent import RecentEvents
from telltale.controller.recorder import Change, Recorder
from telltale.controller.rpc import store_unavailable
from telltale.controller.store import NodeLiveness, Store, Versioned
from telltale.v1 import agent_pb2, agent_pb2_grpc, inventory_pb2

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_MS = 5000
OUTBOUND_QUEUE = 64
MAX_KNOWN_WORKLOADS = 10_000
WRITE_GRACE_S = 10.0
"""How long the end of a stream waits for a write in flight before sending the status anyway."""

NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,252}")
"""What a node id may be: 1-253 ASCII letters, digits, '.', '_', ':' or '-', starting with a letter
or digit. It covers what the agent generates (hostname-random) and what a node certificate names
(telltale/pki.py: 1-128 of letters, digits, '.', '_', '-'), and it is safe in an etcd key."""
MAX_HELLO_STRING = 256
"""Bytes of UTF-8 at most in each other Hello string (hostname, kernel, os, ...)."""
MAX_ADDRESSES = 1024
MAX_ADDRESS = 128
MAX_WORKLOAD_STRING = 512
"""Bytes at most in each string of a workload descriptor: `telltale run` refuses a descriptor of
more than 512 bytes in all (nodeagent/workload.py), so no real one has a longer part."""
MAX_WORKLOAD_TAGS = 64
MAX_SEQ_ADVANCE = 2**32
"""How far ahead of the highest sequence number known for the node a batch may be numbered. The
agent numbers batches one by one; it skips numbers only for the batches its spool dropped, so a
real gap is bounded by the batches made while the controller was out of reach: 2**32 is more than
a century at one batch a second. A larger jump is a broken or hostile agent, and recording it as
the node's last_seq would make every later real batch look like a duplicate."""
NOT_A_REQUEST = "the stream carried a message that is not a ConnectRequest"


def _too_long(text: str, limit: int) -> bool:
    """Whether `text` encodes to more than `limit` bytes of UTF-8 (cheap for short strings)."""
    return len(text) > limit or (len(text) * 4 > limit and len(text.encode()) > limit)


SERVICE = agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name


def _serialize_response(message: agent_pb2.ConnectResponse | bytes) -> bytes:
    return message if isinstance(message, bytes) else message.SerializeToString()


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a write's error as seen (the client went away): whoever awaited it may be gone."""
    if not future.cancelled():
        future.exception()


def check_hello(hello: agent_pb2.Hello) -> None:
    """Raise InvalidArgument naming the first Hello field that is out of bounds."""
    if not NODE_ID.fullmatch(hello.node_id):
        raise InvalidArgument(
            "hello.node_id",
            f"{hello.node_id[:64]!r}: use 1-253 letters, digits, '.', '_', ':' or '-', starting with a "
            "letter or digit",
        )
    for name in ("hostname", "kernel", "os", "agent_version", "instance_id", "boot_id"):
        if _too_long(getattr(hello, name), MAX_HELLO_STRING):
            raise InvalidArgument(f"hello.{name}", f"longer than {MAX_HELLO_STRING} bytes")
    if len(hello.addresses) > MAX_ADDRESSES:
        raise InvalidArgument("hello.addresses", f"{len(hello.addresses)} addresses, at most {MAX_ADDRESSES}")
    for index, address in enumerate(hello.addresses):
        if _too_long(address, MAX_ADDRESS):
            raise InvalidArgument(f"hello.addresses[{index}]", f"longer than {MAX_ADDRESS} bytes")


def check_batch(batch: agent_pb2.EventBatch, highest_seq: int) -> None:
    """Raise InvalidArgument naming the first field of `batch` the controller would not store:
    a sequence number more than MAX_SEQ_ADVANCE past `highest_seq` (the highest known for the
    node), a workload descriptor string over MAX_WORKLOAD_STRING bytes, too many tags."""
    if batch.seq > highest_seq + MAX_SEQ_ADVANCE:
        raise InvalidArgument(
            "batch.seq",
            f"{batch.seq} is more than 2**32 past the node's highest sequence number {highest_seq}",
        )
    limit = MAX_WORKLOAD_STRING
    for index, workload in enumerate(batch.workloads):
        for name in ("id", "application", "component", "version", "environment", "policy_override"):
            if _too_long(getattr(workload, name), limit):
                raise InvalidArgument(f"batch.workloads[{index}].{name}", f"longer than {limit} bytes")
        if len(workload.tags) > MAX_WORKLOAD_TAGS:
            raise InvalidArgument(
                f"batch.workloads[{index}].tags", f"{len(workload.tags)} tags, at most {MAX_WORKLOAD_TAGS}"
            )
        for key, value in workload.tags.items():
            if _too_long(key, limit) or _too_long(value, limit):
                raise InvalidArgument(
                    f"batch.workloads[{index}].tags", f"a key or value longer than {limit} bytes"
                )
    for index, event in enumerate(batch.events):
        if _too_long(event.workload_id, limit):
            raise InvalidArgument(f"batch.events[{index}].workload_id", f"longer than {limit} bytes")


T = TypeVar("T")


class _Mailbox(Generic[T]):
    """A FIFO for one consumer on the event loop; put() waits while `maxsize` items are held
    (0: no bound). What a stream needs of asyncio.Queue at a fraction of its memory (a Queue holds
    three deques and an Event, ~3 KB empty: a stream had two)."""

    __slots__ = ("_getter", "_items", "_maxsize", "_putters")

    def __init__(self, maxsize: int = 0) -> None:
        self._items: list[T] = []
        self._maxsize = maxsize
        self._getter: asyncio.Future[None] | None = None
        self._putters: list[asyncio.Future[None]] | None = None

    def qsize(self) -> int:
        """How many items are held (for the metrics)."""
        return len(self._items)

    def _full(self) -> bool:
        return bool(self._maxsize) and len(self._items) >= self._maxsize

    def put_nowait(self, item: T) -> bool:
        """Add `item` unless the mailbox is full; whether it was added."""
        if self._full():
            return False
        self._items.append(item)
        if self._getter is not None and not self._getter.done():
            self._getter.set_result(None)
        return True

    async def put(self, item: T) -> None:
        """Add `item`, first waiting for room."""
        while self._full():
            waiter = asyncio.get_running_loop().create_future()
            if self._putters is None:
                self._putters = []
            self._putters.append(waiter)
            try:
                await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self._putters.remove(waiter)
        self.put_nowait(item)

    async def get(self) -> T:
        """The oldest item, waiting for one."""
        while not self._items:
            self._getter = asyncio.get_running_loop().create_future()
            try:
                await self._getter
            finally:
                self._getter = None
        item = self._items.pop(0)
        if self._putters:
            waiter = self._putters[0]
            if not waiter.done():
                waiter.set_result(None)
        return item


class AgentService(agent_pb2_grpc.AgentServiceServicer):
    """Serves node agents; every stream is independent and lives as long as the agent's call."""

    def __init__(
        self,
        store: Store,
        policies: PolicyView,
        controller_id: str,
        recent: RecentEvents | None = None,
        liveness: NodeLiveness | None = None,
    ) -> None:
        """`recent` receives every batch this replica records (for policy dry runs); by default a
        window of its own. `liveness` is told which nodes' streams this replica holds."""
        self.store = store
        self.policies = policies
        self.controller_id = controller_id
        self.recent = recent if recent is not None else RecentEvents()
        self.streams: dict[str, int] = {}  # node id -> open streams on this replica
        self.liveness = liveness
        self.recorder = Recorder(store)
        self.raw_updates = False
        """Whether the call's response serializer takes bytes (see register): then every stream
        writes the policy update serialized once per revision (PolicyView.update_bytes)."""

    def register(self, server: grpc.aio.Server) -> None:
        """Serve Connect on `server`, with a response serializer that passes bytes through, so a
        policy update is serialized once per revision rather than once per stream. (Registered
        with the generated add_AgentServiceServicer_to_server instead, streams write messages.)"""
        handlers = {
            "Connect": grpc.stream_stream_rpc_method_handler(
                self.Connect,
                request_deserializer=agent_pb2.ConnectRequest.FromString,
                response_serializer=_serialize_response,
            )
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        self.raw_updates = True

    # The stream is written with context.write() from its own task, so the handler returns None
    # rather than being a generator of responses.
    async def Connect(  # type: ignore[override]
        self,
        request_iterator: AsyncIterator[agent_pb2.ConnectRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        requests = aiter(request_iterator)
        try:
            first = await anext(requests)
        except StopAsyncIteration:
            return
        except DecodeError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, NOT_A_REQUEST)
        if not first.HasField("hello") or not first.hello.node_id.strip():
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "hello: the first message must be a Hello with a node_id"
            )
        try:
            check_hello(first.hello)
        except InvalidArgument as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        certified = node_identity(context)  # None in plaintext mode: no certificates, no binding
        if certified is not None and certified != first.hello.node_id:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"hello.node_id {first.hello.node_id!r} is not the node of the certificate ({certified!r})",
            )
        node_id = first.hello.node_id
        session = _Session(self, first.hello, context)
        self.streams[node_id] = self.streams.get(node_id, 0) + 1
        metrics.stream_opened(session)
        live = None
        try:
            if self.liveness is not None:
                # Before the node record says ONLINE, so the leader never sees an online record
                # of this stream without its liveness key.
                live = await self.liveness.node_connected(node_id)
            await session.run(requests)
        except ControllerError as exc:
            await context.abort(status_of(exc), str(exc))
        except aetcd.ClientError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, store_unavailable(exc))
        finally:
            metrics.stream_closed(session)
            self.streams[node_id] -= 1
            last = not self.streams[node_id]
            if last:
                del self.streams[node_id]
            await session.close(mark_offline=last)
            if live is not None and self.liveness is not None:
                with contextlib.suppress(Exception):
                    await self.liveness.node_disconnected(live)


class _Session:
    """One agent stream."""

    def __init__(
        self, service: AgentService, hello: agent_pb2.Hello, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        self.service = service
        self.store = service.store
        self.policies = service.policies
        self.hello = hello
        self.context = context
        self.recording = service.recorder.attach(hello.node_id)
        # None wakes the writer up to send a new policy revision (see _write_loop).
        self.outbound: _Mailbox[agent_pb2.ConnectResponse | None] = _Mailbox(OUTBOUND_QUEUE)
        self._sent_revision = -1
        self.recorded: _Mailbox[tuple[Evaluated, asyncio.Future[BatchStep | None]]] = _Mailbox()
        self.known_workloads: set[str] = set()
        self.highest_seq = 0  # the highest batch sequence number this stream accepted
        self._write: asyncio.Future[None] | None = None  # the write in flight, if any

    async def run(self, requests: AsyncIterator[agent_pb2.ConnectRequest]) -> None:
        await (await self.recording.change(self._registered))
        log.info(
            "node %s (%s) connected, last seq %d",
            self.hello.node_id,
            self.hello.hostname,
            self.node.value.last_seq,
        )
        welcome = agent_pb2.ConnectResponse(
            welcome=agent_pb2.Welcome(
                controller_id=self.service.controller_id,
                last_seq=self.node.value.last_seq,
                heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
            )
        )
        self.policies.subscribe(self._policy_changed)
        writer = asyncio.create_task(self._write_loop(welcome))
        acker = asyncio.create_task(self._acknowledge())
        reader = asyncio.create_task(self._read_loop(requests))
        failed = self.recording.failed
        try:
            # The stream ends when the agent ends it (once what it sent is recorded), when the
            # client goes away, or when recording fails or the agent sent something it may not
            # (the error, raised here, ends the call with its status).
            await asyncio.wait((reader, writer, acker, failed), return_when=asyncio.FIRST_COMPLETED)
            for task in (failed, acker, reader):
                if task.done():
                    task.result()
        finally:
            self.policies.unsubscribe(self._policy_changed)
            for task in (reader, acker, writer):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await self._write_finished()

    async def _write_finished(self) -> None:
        """Wait (at most WRITE_GRACE_S) for the write in flight to finish. Only then may the call
        end with a status: gRPC refuses a status while a write is in flight (the first write also
        sends the initial metadata, and a status sent meanwhile would send them again)."""
        if self._write is not None and not self._write.done():
            await asyncio.wait((self._write,), timeout=WRITE_GRACE_S)

    async def _read_loop(self, requests: AsyncIterator[agent_pb2.ConnectRequest]) -> None:
        try:
            async for request in requests:
                await self._handle(request)
        except DecodeError:
            raise InvalidArgument("request", NOT_A_REQUEST) from None
        await self.recording.drain()

    @property
    def node(self) -> Versioned[inventory_pb2.Node]:
        """The node record as the recorder last wrote or read it."""
        return self.recording.node

    # -- the node record -------------------------------------------------------------------
    async def _update_node(self, change: Change) -> None:
        """Queue `change` of the node record; the recorder applies it in order (a failure fails
        the stream)."""
        await self.recording.change(change)

    def _registered(self, node: inventory_pb2.Node) -> None:
        hello = self.hello
        node.hostname = hello.hostname
        node.kernel = hello.kernel
        node.os = hello.os
        node.agent_version = hello.agent_version
        node.instance_id = hello.instance_id
        node.controller_id = self.service.controller_id
        node.liveness = inventory_pb2.NODE_LIVENESS_ONLINE
        node.applied_policy_revision = hello.applied_policy_revision
        node.in_sync = hello.applied_policy_revision == self.policies.revision
        del node.addresses[:]
        node.addresses.extend(hello.addresses)
        node.enforcement.CopyFrom(hello.enforcement)
        node.last_seen.GetCurrentTime()

    async def close(self, *, mark_offline: bool) -> None:
        """Leave the recorder; first mark the node offline if asked, unless another stream
        (another replica, a newer agent) owns it now (judged on the record as stored)."""
        instance_id, controller_id = self.hello.instance_id, self.service.controller_id
        recording = self.recording

        def offline(node: inventory_pb2.Node) -> None:
            if node.instance_id != instance_id or node.controller_id != controller_id:
                return
            if recording.others_attached():
                # A newer stream of the node opened on this replica meanwhile (a quick reconnect):
                # its registration may already be written, and it owns the record now.
                return
            node.liveness = inventory_pb2.NODE_LIVENESS_OFFLINE
            node.last_seen.GetCurrentTime()

        await self.recording.close(offline if mark_offline else None)
        log.info("node %s disconnected", self.hello.node_id)

    # -- the stream ------------------------------------------------------------------------
    async def _write_loop(self, welcome: agent_pb2.ConnectResponse) -> None:
        """The only writer of the call: the Welcome, then the policy update whenever a revision
        not sent yet is in force (before what is queued), and the queued responses."""
        await self._send(welcome)
        while True:
            revision = self.policies.revision
            if revision != self._sent_revision:
                self._sent_revision = revision
                raw = self.service.raw_updates
                await self._send(self.policies.update_bytes() if raw else self.policies.update_response())
                continue
            message = await self.outbound.get()
            if message is not None:
                await self._send(message)

    def _policy_changed(self) -> None:
        """A new policy revision is in force: wake the writer (a full queue means it is busy and
        looks at the revision after its current write anyway)."""
        self.outbound.put_nowait(None)

    async def _send(self, message: agent_pb2.ConnectResponse | bytes) -> None:
        """Write one response. The write is shielded: cancelling the writer never cuts a write
        short (see _write_finished)."""
        self._write = asyncio.ensure_future(self.context.write(message))
        self._write.add_done_callback(_retrieve)
        await asyncio.shield(self._write)
        self._write = None  # done: not kept until the next write

    async def _handle(self, request: agent_pb2.ConnectRequest) -> None:
        which = request.WhichOneof("message")
        if which == "batch":
            await self._handle_batch(request.batch)
        elif which == "heartbeat":
            # Loss counters arrive as per-batch deltas; the heartbeat proves liveness and shows
            # the agent's spool.
            beat = request.heartbeat

            def heartbeat(node: inventory_pb2.Node) -> None:
                node.last_seen.GetCurrentTime()
                # A heartbeat proves the node online, also after a leader marked it offline while
                # this replica's lease had lapsed.
                node.liveness = inventory_pb2.NODE_LIVENESS_ONLINE
                node.spooled_batches = beat.spooled_batches
                node.dropped_batches = beat.dropped_batches
                node.enforcement.CopyFrom(beat.enforcement)

            await self._update_node(heartbeat)
        elif which == "policy_applied":
            applied = request.policy_applied
            if applied.error:
                log.warning(
                    "node %s could not apply policy revision %d: %r",
                    self.hello.node_id,
                    applied.revision,
                    applied.error[:200],
                )

            def acknowledged(node: inventory_pb2.Node) -> None:
                if not applied.error:
                    node.applied_policy_revision = applied.revision
                node.enforcement.CopyFrom(applied.enforcement)
                node.in_sync = node.applied_policy_revision == self.policies.revision

            await self._update_node(acknowledged)
        elif which == "node_state":
            await apply_node_state(
                self.store, request.node_state, self.hello.node_id, self.policies.policy_set, time.time_ns()
            )
        elif which == "hello":
            raise InvalidArgument("hello", "sent twice on one stream")

    async def _handle_batch(self, batch: agent_pb2.EventBatch) -> None:
        check_batch(batch, max(self.highest_seq, self.node.value.last_seq))
        self.highest_seq = max(self.highest_seq, batch.seq)
        now_ns = time.time_ns()
        item = evaluate(batch, self.hello.node_id, self.policies.policy_set, now_ns)
        self.recorded.put_nowait((item, await self.recording.record_batch(item)))

    async def _acknowledge(self) -> None:
        """Acknowledge batches in order, each once the transaction holding it committed: remember
        its events, record its workloads, send the BatchAck. Raises what recording raised."""
        while True:
            item, recorded = await self.recorded.get()
            step = await recorded
            assert step is not None
            batch = item.batch
            metrics.observe_batch(batch, step, step.before, step.after, time.time_ns())
            if not step.duplicate:
                self.service.recent.add_batch(batch, self.hello.node_id, item.now_ns)
                await self._record_workloads(batch)
            await self.outbound.put(agent_pb2.ConnectResponse(batch_ack=agent_pb2.BatchAck(seq=batch.seq)))
            self.recording.release()

    async def _record_workloads(self, batch: agent_pb2.EventBatch) -> None:
        """Record each workload once per stream, and again when the batch reports coverage gaps
        of it (the stored gaps are kept)."""
        gaps = gaps_by_workload(batch)
        for workload in workloads_of(batch, self.hello.node_id).values():
            if workload.id in self.known_workloads and workload.id not in gaps:
                continue
            if len(self.known_workloads) >= MAX_KNOWN_WORKLOADS:
                self.known_workloads.clear()
            self.known_workloads.add(workload.id)
            await record_workload(self.store, workload, gaps.get(workload.id, ()))
