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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aetcd
import grpc

from telltale.controller import metrics
from telltale.controller.auth import node_identity
from telltale.controller.coverage import gaps_by_workload, record_workload
from telltale.controller.errors import ControllerError, status_of
from telltale.controller.ingest import BatchStep, Evaluated, apply_node_state, evaluate, workloads_of
from telltale.controller.policies import PolicyView
from telltale.controller.recent import RecentEvents, batch_events
from telltale.controller.recorder import Change, Recorder
from telltale.controller.rpc import store_unavailable
from telltale.controller.store import NodeLiveness, Store, Versioned
from telltale.v1 import agent_pb2, agent_pb2_grpc, inventory_pb2

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_MS = 5000
OUTBOUND_QUEUE = 64
MAX_KNOWN_WORKLOADS = 10_000


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
        if not first.HasField("hello") or not first.hello.node_id.strip():
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "hello: the first message must be a Hello with a node_id"
            )
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
        self.outbound: asyncio.Queue[agent_pb2.ConnectResponse] = asyncio.Queue(OUTBOUND_QUEUE)
        self.recorded: asyncio.Queue[tuple[Evaluated, asyncio.Future[BatchStep | None]]] = asyncio.Queue()
        self.known_workloads: set[str] = set()

    async def run(self, requests: AsyncIterator[agent_pb2.ConnectRequest]) -> None:
        await (await self.recording.change(self._registered))
        log.info(
            "node %s (%s) connected, last seq %d",
            self.hello.node_id,
            self.hello.hostname,
            self.node.value.last_seq,
        )
        await self.outbound.put(
            agent_pb2.ConnectResponse(
                welcome=agent_pb2.Welcome(
                    controller_id=self.service.controller_id,
                    last_seq=self.node.value.last_seq,
                    heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
                )
            )
        )
        writer = asyncio.create_task(self._write_loop())
        pusher = asyncio.create_task(self._push_policies())
        acker = asyncio.create_task(self._acknowledge())
        reader = asyncio.create_task(self._read_loop(requests))
        failed = self.recording.failed
        try:
            # The stream ends when the agent ends it (once what it sent is recorded), when the
            # client goes away, or when recording fails (its error aborts the call).
            await asyncio.wait((reader, writer, acker, failed), return_when=asyncio.FIRST_COMPLETED)
            for task in (failed, acker, reader):
                if task.done():
                    task.result()
        finally:
            for task in (reader, pusher, acker, writer):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _read_loop(self, requests: AsyncIterator[agent_pb2.ConnectRequest]) -> None:
        async for request in requests:
            await self._handle(request)
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

        def offline(node: inventory_pb2.Node) -> None:
            if node.instance_id != instance_id or node.controller_id != controller_id:
                return
            node.liveness = inventory_pb2.NODE_LIVENESS_OFFLINE
            node.last_seen.GetCurrentTime()

        await self.recording.close(offline if mark_offline else None)
        log.info("node %s disconnected", self.hello.node_id)

    # -- the stream ------------------------------------------------------------------------
    async def _write_loop(self) -> None:
        while True:
            message = await self.outbound.get()
            await self.context.write(message)

    async def _push_policies(self) -> None:
        sent = -1
        while True:
            async with self.policies.changed:
                while self.policies.revision == sent:
                    await self.policies.changed.wait()
            sent = self.policies.revision
            await self.outbound.put(self.policies.update_response())

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
            await self.context.abort(grpc.StatusCode.INVALID_ARGUMENT, "hello: sent twice on one stream")

    async def _handle_batch(self, batch: agent_pb2.EventBatch) -> None:
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
                self.service.recent.add(batch_events(batch, self.hello.node_id), item.now_ns)
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
