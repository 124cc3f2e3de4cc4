"""Batching, and the loss counters that batches carry.

Events are grouped into EventBatch messages bounded by size and by age; each batch gets the next
sequence number and stays in the spool (telltale.nodeagent.spool) until the controller acknowledges
it. When the spool is full, a batch that carries events drops the oldest batch and its events are
counted as lost; a batch that would carry only loss counts is not made, and the counts wait for the
next batch that fits (the heartbeats carry the totals meanwhile), so reporting losses never destroys
events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

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
        self.count_dropped_batch_counts(len(lost.events), lost.dropped_records, lost.malformed_records)

    def count_dropped_batch_counts(self, events: int, dropped_records: int, malformed_records: int) -> None:
        """count_dropped_batch for a batch known by its counts only (its payload stays on disk)."""
        self.dropped_batches = saturating_add(self.dropped_batches, 1)
        self.count_dropped(events)
        self.unsent_dropped = saturating_add(self.unsent_dropped, dropped_records)
        self.unsent_malformed = saturating_add(self.unsent_malformed, malformed_records)

    def count_refused_connection(self) -> None:
        self.refused_connections = saturating_add(self.refused_connections, 1)

    @property
    def losses_unsent(self) -> bool:
        """True when losses wait to be reported in a batch."""
        return bool(self.unsent_dropped or self.unsent_malformed)


class BatchSink(Protocol):
    """Where closed batches go: the spool (see telltale.nodeagent.spool.Spool)."""

    counters: Counters

    @property
    def full(self) -> bool:
        """True when appending a batch would drop the oldest one."""
        ...

    def append(self, batch: agent_pb2.EventBatch) -> bool:
        """Number and keep `batch`; False when a batch without events was refused for lack of room."""
        ...


class Batcher:
    """Collects events and the workloads they refer to into batches for the spool."""

    def __init__(self, spool: BatchSink, *, max_events: int = MAX_BATCH_EVENTS) -> None:
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
