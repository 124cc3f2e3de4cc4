"""AgentService: the one bidirectional stream each node agent keeps open.

Per stream: Hello → Welcome; every EventBatch is evaluated, recorded and acknowledged in order
(batches at or below the node's recorded sequence are duplicates from a resend: acknowledged,
not counted twice; a jump in sequence is counted as a gap); every policy-state change is pushed
as a PolicyUpdate and the node's acknowledgement is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from telltale.controller.ingest import ingest_batch
from telltale.controller.policies import PolicyView
from telltale.controller.store import Store
from telltale.v1 import agent_pb2, agent_pb2_grpc, inventory_pb2

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_MS = 5000
OUTBOUND_QUEUE = 64


def _now_ts() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


class AgentService(agent_pb2_grpc.AgentServiceServicer):
    """Serves node agents; every stream is independent and lives as long as the agent's call."""

    def __init__(self, store: Store, policies: PolicyView, controller_id: str) -> None:
        self._store = store
        self._policies = policies
        self._controller_id = controller_id
        self.connected: dict[str, int] = {}
        self.events_received = 0

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
        session = _Session(self, first.hello, context)
        node_id = first.hello.node_id
        self.connected[node_id] = self.connected.get(node_id, 0) + 1
        try:
            await session.run(requests)
        finally:
            self.connected[node_id] -= 1
            if not self.connected[node_id]:
                del self.connected[node_id]
                await session.mark_offline()


class _Session:
    """One agent stream."""

    def __init__(
        self, service: AgentService, hello: agent_pb2.Hello, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        self.service = service
        self.store = service._store
        self.policies = service._policies
        self.hello = hello
        self.context = context
        self.node = inventory_pb2.Node(node_id=hello.node_id)
        self.outbound: asyncio.Queue[agent_pb2.ConnectResponse] = asyncio.Queue(OUTBOUND_QUEUE)
        self.known_workloads: set[str] = set()

    async def run(self, requests: AsyncIterator[agent_pb2.ConnectRequest]) -> None:
        await self._register()
        await self.outbound.put(
            agent_pb2.ConnectResponse(
                welcome=agent_pb2.Welcome(
                    controller_id=self.service._controller_id,
                    last_seq=self.node.last_seq,
                    heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
                )
            )
        )
        writer = asyncio.create_task(self._write_loop())
        pusher = asyncio.create_task(self._push_policies())
        try:
            async for request in requests:
                await self._handle(request)
                if writer.done():
                    break
        finally:
            pusher.cancel()
            writer.cancel()
            for task in (pusher, writer):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _register(self) -> None:
        stored = await self.store.get_node(self.hello.node_id)
        if stored is not None:
            self.node.CopyFrom(stored.value)
        hello = self.hello
        self.node.hostname = hello.hostname
        self.node.kernel = hello.kernel
        self.node.os = hello.os
        self.node.agent_version = hello.agent_version
        self.node.controller_id = self.service._controller_id
        self.node.liveness = inventory_pb2.NODE_LIVENESS_ONLINE
        self.node.applied_policy_revision = hello.applied_policy_revision
        self.node.in_sync = hello.applied_policy_revision == self.policies.revision
        del self.node.addresses[:]
        self.node.addresses.extend(hello.addresses)
        self.node.last_seen.CopyFrom(_now_ts())
        await self.store.put_node(self.node)
        log.info("node %s (%s) connected, last seq %d", self.node.node_id, hello.hostname, self.node.last_seq)

    async def mark_offline(self) -> None:
        self.node.liveness = inventory_pb2.NODE_LIVENESS_OFFLINE
        self.node.last_seen.CopyFrom(_now_ts())
        with contextlib.suppress(Exception):
            await self.store.put_node(self.node)
        log.info("node %s disconnected", self.node.node_id)

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
            await self.outbound.put(agent_pb2.ConnectResponse(policy_update=self.policies.update_message()))

    async def _handle(self, request: agent_pb2.ConnectRequest) -> None:
        which = request.WhichOneof("message")
        if which == "batch":
            await self._handle_batch(request.batch)
        elif which == "heartbeat":
            # Loss counters arrive as per-batch deltas; the heartbeat only proves liveness.
            self.node.last_seen.CopyFrom(_now_ts())
            await self.store.put_node(self.node)
        elif which == "policy_applied":
            applied = request.policy_applied
            if applied.error:
                log.warning(
                    "node %s could not apply policy revision %d: %s",
                    self.node.node_id,
                    applied.revision,
                    applied.error,
                )
            else:
                self.node.applied_policy_revision = applied.revision
            self.node.in_sync = self.node.applied_policy_revision == self.policies.revision
            await self.store.put_node(self.node)
        elif which == "node_state":
            pass  # host-state evaluation arrives with the node-agent issue; accepted and ignored
        elif which == "hello":
            await self.context.abort(grpc.StatusCode.INVALID_ARGUMENT, "hello: sent twice on one stream")

    async def _handle_batch(self, batch: agent_pb2.EventBatch) -> None:
        node = self.node
        if batch.seq <= node.last_seq:
            await self._ack(batch.seq)  # a resend of something already recorded
            return
        if node.last_seq and batch.seq > node.last_seq + 1:
            node.sequence_gaps += batch.seq - node.last_seq - 1
            log.warning(
                "node %s: %d batches missing before seq %d",
                node.node_id,
                batch.seq - node.last_seq - 1,
                batch.seq,
            )
        result = await ingest_batch(self.store, batch, node.node_id, self.policies.policy_set, time.time_ns())
        self.service.events_received += result.events
        for workload in batch.workloads:
            if workload.id not in self.known_workloads:
                self.known_workloads.add(workload.id)
                stamped = type(workload)()
                stamped.CopyFrom(workload)
                stamped.node_id = node.node_id
                await self.store.put_workload(stamped)
        node.last_seq = batch.seq
        node.dropped_records += batch.dropped_records
        node.malformed_records += batch.malformed_records
        node.last_seen.CopyFrom(_now_ts())
        await self.store.put_node(node)
        await self._ack(batch.seq)

    async def _ack(self, seq: int) -> None:
        await self.outbound.put(agent_pb2.ConnectResponse(batch_ack=agent_pb2.BatchAck(seq=seq)))
