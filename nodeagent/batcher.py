"""Batching and the agent's bounded spool of unacknowledged batches.

Events are grouped into EventBatch messages bounded by size and by age; each batch gets the next
sequence number and stays in the spool until the controller acknowledges it. When the spool is
full the oldest batch is dropped and its events are counted as lost.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import trio

from telltale.v1 import agent_pb2, common_pb2

MAX_BATCH_EVENTS = 256
MAX_BATCH_AGE_S = 0.1


@dataclass
class Counters:
    """Loss and volume counters of the agent; deltas are carried by the next batch."""

    records: int = 0
    malformed: int = 0
    dropped: int = 0
    dropped_batches: int = 0
    unsent_malformed: int = 0
    unsent_dropped: int = 0

    def count_malformed(self, n: int = 1) -> None:
        self.malformed += n
        self.unsent_malformed += n

    def count_dropped(self, n: int) -> None:
        self.dropped += n
        self.unsent_dropped += n


@dataclass
class Spool:
    """Batches waiting for acknowledgement, oldest first, at most `capacity` of them."""

    capacity: int = 4096
    counters: Counters = field(default_factory=Counters)
    next_seq: int = 1
    batches: deque[agent_pb2.EventBatch] = field(default_factory=deque)
    _changed: trio.Event = field(default_factory=trio.Event)

    def append(self, batch: agent_pb2.EventBatch) -> None:
        """Number `batch` and keep it; drops (and counts) the oldest batch when full."""
        batch.seq = self.next_seq
        self.next_seq += 1
        if len(self.batches) >= self.capacity:
            lost = self.batches.popleft()
            self.counters.dropped_batches += 1
            self.counters.count_dropped(len(lost.events))
            # The losses that batch was reporting must still reach the controller.
            self.counters.unsent_dropped += lost.dropped_records
            self.counters.unsent_malformed += lost.malformed_records
        self.batches.append(batch)
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def ack(self, seq: int) -> None:
        """Forget every batch up to and including `seq`."""
        while self.batches and self.batches[0].seq <= seq:
            self.batches.popleft()
        self._notify()

    def renumber_from(self, first_seq: int) -> None:
        """Renumber every kept batch from `first_seq` (a fresh agent learning the controller's position)."""
        for offset, batch in enumerate(self.batches):
            batch.seq = first_seq + offset
        self.next_seq = first_seq + len(self.batches)

    def pending_from(self, seq: int) -> list[agent_pb2.EventBatch]:
        """Kept batches with sequence number >= seq."""
        return [b for b in self.batches if b.seq >= seq]

    async def wait_changed(self) -> None:
        """Return at the next append or acknowledgement."""
        await self._changed.wait()

    async def wait_beyond(self, seq: int) -> None:
        """Return once a batch with sequence number >= seq exists."""
        while self.next_seq <= seq:
            await self._changed.wait()


class Batcher:
    """Collects events and the workloads they refer to into batches for the spool."""

    def __init__(self, spool: Spool, *, max_events: int = MAX_BATCH_EVENTS) -> None:
        self._spool = spool
        self._max_events = max_events
        self._events: list[common_pb2.Event] = []
        self._workloads: dict[str, common_pb2.Workload] = {}
        self.opened_at: float | None = None

    def add(self, event: common_pb2.Event, workload: common_pb2.Workload | None, now: float) -> None:
        """Add one event (and its workload descriptor); flushes when the batch is full."""
        if self.opened_at is None:
            self.opened_at = now
        self._events.append(event)
        if workload is not None and workload.id not in self._workloads:
            self._workloads[workload.id] = workload
        if len(self._events) >= self._max_events:
            self.flush()

    def due(self, now: float) -> bool:
        """True when the open batch is older than MAX_BATCH_AGE_S, or when losses wait to be reported."""
        if self.opened_at is None:
            counters = self._spool.counters
            return bool(counters.unsent_dropped or counters.unsent_malformed)
        return now - self.opened_at >= MAX_BATCH_AGE_S

    def flush(self) -> None:
        """Close the open batch (if any, or if loss counts must be reported) into the spool."""
        counters = self._spool.counters
        if not self._events and not counters.unsent_dropped and not counters.unsent_malformed:
            return
        batch = agent_pb2.EventBatch(
            workloads=list(self._workloads.values()),
            events=self._events,
            dropped_records=counters.unsent_dropped,
            malformed_records=counters.unsent_malformed,
        )
        counters.unsent_dropped = counters.unsent_malformed = 0
        self._events = []
        self._workloads = {}
        self.opened_at = None
        self._spool.append(batch)
