"""Batching, and the loss counters that batches carry.

Events are grouped into EventBatch messages bounded by size and by age (kept serialized: a batch
is written by framing its events' bytes, never by copying messages); each batch gets the next
sequence number and stays in the spool (telltale.nodeagent.spool) until the controller acknowledges
it. When the spool is full, a batch that carries events drops the oldest batch and its events are
counted as lost; a batch that would carry only loss counts is not made, and the counts wait for the
next batch that fits (the heartbeats carry the totals meanwhile), so reporting losses never destroys
events.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from telltale.v1 import agent_pb2, common_pb2

try:
    from telltale._native import _records as native_records
except ImportError:  # not built: events are framed in Python
    native_records = None  # type: ignore[assignment]

MAX_BATCH_EVENTS = 256
MAX_BATCH_AGE_S = 0.1


U64_MAX = 2**64 - 1  # the largest value of a protobuf uint64
# The largest batch that carries only loss counts (what `Batcher.flush` makes without events): a sink
# with room for this many more bytes accepts any such batch.
LOSS_BATCH_MAX_BYTES = 2 * (1 + 10)  # two uint64 fields: a tag byte and at most 10 varint bytes each


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


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _join_events_py(events: list[bytes]) -> bytes:
    """native_records.join_events in Python: each Event as EventBatch field 3 (tag 0x1a, length)."""
    return b"".join(b"\x1a" + _varint(len(event)) + event for event in events)


join_events: Callable[[list[bytes]], bytes] = (
    _join_events_py if native_records is None else native_records.join_events
)


class BatchSink(Protocol):
    """Where closed batches go: the spool (see telltale.nodeagent.spool.Spool)."""

    counters: Counters

    @property
    def full(self) -> bool:
        """True unless a batch without events of up to LOSS_BATCH_MAX_BYTES would be accepted now.

        When False, `append_serialized` of such a batch must succeed; when True, a batch with events
        may push the oldest one out.
        """
        ...

    def append_serialized(self, payload: bytes, *, events: int, dropped: int, malformed: int) -> bool:
        """Number and keep a serialized EventBatch of `events` events reporting these losses; False
        when a batch without events was refused for lack of room (nothing is then dropped)."""
        ...


class Batcher:
    """Collects serialized events and the workloads they refer to into batches for the spool.

    Events are kept as serialized telltale.v1.Event bytes and a batch is serialized by framing them
    (nothing is parsed or copied into messages): each batch holds at most `max_events` events, in
    the order they were added, and every distinct workload (by id) its events were added with.
    Raises ValueError when `max_events` is below 1.
    """

    def __init__(self, spool: BatchSink, *, max_events: int = MAX_BATCH_EVENTS) -> None:
        if max_events < 1:
            raise ValueError(f"a batch holds at least one event, not {max_events}")
        self._spool = spool
        self._max_events = max_events
        self._events: list[bytes] = []
        self._workloads: dict[str, common_pb2.Workload] = {}
        self.opened_at: float | None = None

    def add(self, event: common_pb2.Event | bytes, workload: common_pb2.Workload | None, now: float) -> None:
        """Add one event, a message or its serialized form (and its workload descriptor); flushes
        when the batch is full. `now` is the time on the flush clock (see `due`)."""
        self.extend([event if isinstance(event, bytes) else event.SerializeToString()], workload, now)

    def extend(self, events: list[bytes], workload: common_pb2.Workload | None, now: float) -> None:
        """Add serialized Events, in order, all referring to `workload` (None: to no known one).

        Closes a batch into the spool each time one holds `max_events`; `now` opens the age of a
        batch this opens (see `due`). The bytes are trusted: an item that is not a serialized Event
        makes every batch it is in unreadable by the controller. Does not keep `events` itself.
        """
        start, total = 0, len(events)
        while start < total:
            if self.opened_at is None:
                self.opened_at = now
            if workload is not None and workload.id not in self._workloads:
                self._workloads[workload.id] = workload
            room = self._max_events - len(self._events)
            if start == 0 and total <= room:
                self._events += events
                start = total
            else:
                self._events += events[start : start + room]
                start += room
            if len(self._events) >= self._max_events:
                self.flush()

    def due(self, now: float) -> bool:
        """True when the open batch is older than MAX_BATCH_AGE_S, or when losses wait to be reported
        and the spool has room for a batch carrying only them (it is not `full`)."""
        if self.opened_at is None:
            return self._spool.counters.losses_unsent and not self._spool.full
        return now - self.opened_at >= MAX_BATCH_AGE_S

    def flush(self) -> None:
        """Close the open batch into the spool, with the losses counted since the last batch.

        Without events, a batch is made only to report losses, and only when the spool has room;
        otherwise the counts stay pending for the next batch. If the spool refuses the batch anyway,
        its counts are pending again (added back, held at U64_MAX): a loss is never forgotten.
        """
        counters = self._spool.counters
        events = self._events
        if not events and (not counters.losses_unsent or self._spool.full):
            return
        dropped, malformed = counters.unsent_dropped, counters.unsent_malformed
        head = agent_pb2.EventBatch(
            workloads=self._workloads.values(), dropped_records=dropped, malformed_records=malformed
        )
        payload = head.SerializeToString() + join_events(events)
        # Zeroed before appending: a batch pushed out by this one adds its own losses back.
        counters.unsent_dropped = counters.unsent_malformed = 0
        self._events = []
        self._workloads = {}
        self.opened_at = None
        if not self._spool.append_serialized(
            payload, events=len(events), dropped=dropped, malformed=malformed
        ):
            # Refused (only a batch without events can be): its counts wait for the next batch.
            counters.unsent_dropped = saturating_add(counters.unsent_dropped, dropped)
            counters.unsent_malformed = saturating_add(counters.unsent_malformed, malformed)
