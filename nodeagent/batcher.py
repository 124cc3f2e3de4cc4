"""Batching and the agent's bounded spool of unacknowledged batches.

Events are grouped into EventBatch messages bounded by size and by age; each batch gets the next
sequence number and stays in the spool until the controller acknowledges it. When the spool is
full, a batch that carries events drops the oldest batch and its events are counted as lost; a batch
that would carry only loss counts is not made, and the counts wait for the next batch that fits (the
heartbeats carry the totals meanwhile), so reporting losses never destroys events.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import trio

from telltale.v1 import agent_pb2, common_pb2

MAX_BATCH_EVENTS = 256
MAX_BATCH_AGE_S = 0.1


U64_MAX = 2**64 - 1  # the largest value of a protobuf uint64


def saturating_add(total: int, n: int) -> int:
    """`total + n`, held at U64_MAX: counters go into protobuf uint64 fields, which reject more."""
    return min(total + n, U64_MAX)


@dataclass
class Counters:
    """Loss and volume counters of the agent; loss deltas are carried by the next batch.

    The counters that reach the controller (in batches and heartbeats, as protobuf uint64) change
    only through the count_* methods, which hold them at U64_MAX whatever records claim.
    """

    records: int = 0
    malformed: int = 0
    dropped: int = 0
    dropped_batches: int = 0
    refused_connections: int = 0  # shim connections closed at once because too many were open
    unsent_malformed: int = 0
    unsent_dropped: int = 0

    def count_malformed(self, n: int = 1) -> None:
        self.malformed = saturating_add(self.malformed, n)
        self.unsent_malformed = saturating_add(self.unsent_malformed, n)

    def count_dropped(self, n: int) -> None:
        self.dropped = saturating_add(self.dropped, n)
        self.unsent_dropped = saturating_add(self.unsent_dropped, n)

    def count_dropped_batch(self, lost: agent_pb2.EventBatch) -> None:
        """A batch pushed out of the spool: its events are lost, and the losses it was reporting
        must still reach the controller (they are counted in the totals already)."""
        self.dropped_batches = saturating_add(self.dropped_batches, 1)
        self.count_dropped(len(lost.events))
        self.unsent_dropped = saturating_add(self.unsent_dropped, lost.dropped_records)
        self.unsent_malformed = saturating_add(self.unsent_malformed, lost.malformed_records)

    def count_refused_connection(self) -> None:
        self.refused_connections = saturating_add(self.refused_connections, 1)

    @property
    def losses_unsent(self) -> bool:
        """True when losses wait to be reported in a batch."""
        return bool(self.unsent_dropped or self.unsent_malformed)


@dataclass
class Spool:
    """Batches waiting for acknowledgement, oldest first, at most `capacity` of them."""

    capacity: int = 4096
    counters: Counters = field(default_factory=Counters)
    next_seq: int = 1
    batches: deque[agent_pb2.EventBatch] = field(default_factory=deque)
    _changed: trio.Event = field(default_factory=trio.Event)

    @property
    def full(self) -> bool:
        """True when appending a batch would drop the oldest one."""
        return len(self.batches) >= self.capacity

    def append(self, batch: agent_pb2.EventBatch) -> bool:
        """Number `batch` and keep it; True when kept.

        When the spool is full, a batch with events drops (and counts) the oldest batch; a batch
        without events is refused (False, no number used): losses are never reported at the cost
        of events.
        """
        if self.full:
            if not batch.events:
                return False
            self.counters.count_dropped_batch(self.batches.popleft())
        batch.seq = self.next_seq
        self.next_seq += 1
        self.batches.append(batch)
        self._notify()
        return True

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def ack(self, seq: int) -> None:
        """Forget every batch up to and including `seq`."""
        while self.batches and self.batches[0].seq <= seq:
            self.batches.popleft()
        self._notify()

    def renumber_from(self, first_seq: int) -> None:
        """Renumber every kept batch from `first_seq`, continuing the sequence a controller knows."""
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
        """True when the open batch is older than MAX_BATCH_AGE_S, or when losses wait to be reported
        and the spool has room for a batch carrying only them."""
        if self.opened_at is None:
            return self._spool.counters.losses_unsent and not self._spool.full
        return now - self.opened_at >= MAX_BATCH_AGE_S

    def flush(self) -> None:
        """Close the open batch into the spool.

        Without events, a batch is made only to report losses, and only when the spool has room;
        otherwise the counts stay pending for the next batch.
        """
        counters = self._spool.counters
        if not self._events and (not counters.losses_unsent or self._spool.full):
            return
        batch = agent_pb2.EventBatch(
            workloads=list(self._workloads.values()),
            events=self._events,
            dropped_records=counters.unsent_dropped,
            malformed_records=counters.unsent_malformed,
        )
        # Zeroed before appending: a batch pushed out by this one adds its own losses back.
        counters.unsent_dropped = counters.unsent_malformed = 0
        self._events = []
        self._workloads = {}
        self.opened_at = None
        self._spool.append(batch)  # kept: it has events, or the spool has room
