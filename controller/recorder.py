"""Coalesced recording of one agent stream's batches: a storm of repeats is not a storm of writes.

Batches are evaluated as they arrive and queued. One writer per stream records them: it takes
every queued batch (up to MAX_COALESCED_BATCHES, and no more than MAX_BATCH_ALERTS distinct alerts
unless a single batch has more) and records them in one transaction (ingest.commit_batches): the
findings merged per alert, the node record carrying the highest sequence number. While that
transaction is in flight, new batches queue up and go together in the next one. No batch waits
on purpose: the extra latency is at most the commit in flight when it arrived.

A batch is acknowledged (`committed` is called) only after the transaction that contains it has
committed, in the order batches arrived, so nothing acknowledged is lost and, the sequence number
being written with the alerts, nothing is counted twice.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from telltale.controller.ingest import BatchStep, Evaluated, commit_batches
from telltale.controller.store import MAX_BATCH_ALERTS, Store, Versioned
from telltale.v1 import inventory_pb2

MAX_COALESCED_BATCHES = 64
"""Batches recorded by one transaction at most."""
MAX_QUEUED_BATCHES = 256
"""Batches a stream may have waiting; beyond, reading the stream waits (gRPC flow control)."""


@dataclass
class NodeRecord:
    """The node record as one stream last wrote or read it, and the lock that orders its writes
    (batches, heartbeats and policy acknowledgements all write the record with compare-and-swap)."""

    value: Versioned[inventory_pb2.Node]
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


Committed = Callable[[Evaluated, BatchStep], Awaitable[None]]
"""Called for each recorded batch, in order, with what recording did with it."""


class Coalescer:
    """The batch writer of one stream; run() is its task, submit() feeds it."""

    def __init__(
        self,
        store: Store,
        node: NodeRecord,
        committed: Committed,
        *,
        max_batches: int = MAX_COALESCED_BATCHES,
        max_queued: int = MAX_QUEUED_BATCHES,
    ) -> None:
        self._store = store
        self._node = node
        self._committed = committed
        self._max_batches = max_batches
        self._max_queued = max_queued
        self._queue: deque[Evaluated] = deque()
        self._changed = asyncio.Condition()
        self._busy = False
        self.transactions = 0
        """Transactions written so far (for tests and metrics)."""

    async def submit(self, item: Evaluated) -> None:
        """Queue a batch; waits while MAX_QUEUED_BATCHES are waiting already."""
        async with self._changed:
            await self._changed.wait_for(lambda: len(self._queue) < self._max_queued)
            self._queue.append(item)
            self._changed.notify_all()

    async def drain(self) -> None:
        """Wait until every submitted batch is recorded and acknowledged (the writer must run)."""
        async with self._changed:
            await self._changed.wait_for(lambda: not self._queue and not self._busy)

    def _take(self) -> list[Evaluated]:
        taken = [self._queue.popleft()]
        fingerprints = set(taken[0].groups)
        while self._queue and len(taken) < self._max_batches:
            union = fingerprints | self._queue[0].groups.keys()
            if len(union) > MAX_BATCH_ALERTS:
                break
            taken.append(self._queue.popleft())
            fingerprints = union
        return taken

    async def run(self) -> None:
        """Record queued batches until cancelled; raises what recording raises (Unavailable,
        aetcd.ClientError), and then the unrecorded batches are never acknowledged."""
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda: bool(self._queue))
                taken = self._take()
                self._busy = True
                self._changed.notify_all()
            async with self._node.lock:
                outcome = await commit_batches(self._store, taken, self._node.value)
                self._node.value = outcome.node
            self.transactions += outcome.transactions
            for item, step in zip(taken, outcome.steps, strict=True):
                await self._committed(item, step)
            async with self._changed:
                self._busy = False
                self._changed.notify_all()
