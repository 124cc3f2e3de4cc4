"""The replica's recorder: one writer for the batches and node records of every agent stream.

Streams submit work and go on reading: evaluated batches (evaluation happens in the stream, on
arrival) and changes of the node record (registration, heartbeat, policy acknowledgement, going
offline), each a function applied to the record in the order submitted. One writer task takes
everything queued across all streams, as much as one etcd transaction holds (MAX_TXN_KEYS keys:
node records plus distinct alerts; MAX_GROUP_BATCHES batches), and records it in ONE
compare-and-swap transaction (Store.commit_records): every involved node record, carrying its
highest sequence number, and every alert its findings touched, the findings merged per
fingerprint across all nodes. While that transaction is in flight, new work queues up and goes in
the next one: no work waits on purpose, and the streams of one replica never race each other.
Up to MAX_IN_FLIGHT transactions are in flight at once, over disjoint keys: a stream whose next
work touches a key in flight waits for it, so each node's work is recorded in order.

Exactly once: a batch at or below its node's recorded last_seq is a duplicate and changes
nothing; a batch is acknowledged (its future resolves, in submission order) only after the
transaction holding it committed. A stream whose work fails has every queued item failed with it,
so nothing behind an unrecorded batch is ever recorded.

The recorder owns the current value of each attached node's record and keeps an LRU cache of
alerts (fingerprint → Versioned alert), so a batch costs no read: writes compare against the
cached mod revisions. Only other replicas (or API writes) move those keys; a lost comparison
returns the current values of what moved (Stale), and the group is recomputed and retried with
jittered backoff. A node whose record keeps moving (its agent reconnected to another replica) is
dropped from the group and its stream failed (Unavailable); the rest of the group is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from telltale.controller import metrics
from telltale.controller.errors import Unavailable
from telltale.controller.ingest import (
    BatchStep,
    Evaluated,
    Group,
    advance_node,
    commit_batches,
    merge_groups,
)
from telltale.controller.store import MAX_TXN_KEYS, Stale, Store, Versioned
from telltale.v1 import alert_pb2, inventory_pb2

log = logging.getLogger(__name__)

MAX_GROUP_BATCHES = 512
"""Batches recorded by one transaction at most (bounds the work of one merge)."""
MAX_QUEUED_BATCHES = 256
"""Work a stream may have outstanding (queued, or recorded and not yet acknowledged); beyond,
submitting waits, so reading the stream waits (gRPC flow control)."""
MAX_ATTEMPTS = 12
"""Transactions one group may lose before its streams fail (Unavailable)."""
NODE_CONFLICTS = 3
"""Lost transactions in a row after which a node whose own record moved each time is dropped."""
ALERT_CACHE_SIZE = 100_000
"""Alerts the recorder remembers (least recently used go first)."""
MAX_IN_FLIGHT = 4
"""Transactions in flight at once; their keys never overlap."""
STOPPED = Unavailable("the controller is stopping; retry")

Change = Callable[[inventory_pb2.Node], None]
"""A change of a node record: edits the message it is given (a copy of the current record)."""


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a future's exception as seen: whoever could await it may be gone."""
    if not future.cancelled():
        future.exception()


@dataclass(eq=False, slots=True)
class _Work:
    stream: RecorderStream
    batch: Evaluated | None
    change: Change | None
    done: asyncio.Future[BatchStep | None]


@dataclass(eq=False, slots=True)
class _Node:
    """A node record the recorder writes: its current value (None until read) and its users."""

    node_id: str
    value: Versioned[inventory_pb2.Node] | None = None
    streams: int = 0
    pending: int = 0  # works queued or being recorded

    def current(self) -> Versioned[inventory_pb2.Node]:
        if self.value is None:
            return Versioned(inventory_pb2.Node(node_id=self.node_id), 0)
        return self.value


class RecorderStream:
    """One agent stream's handle on the recorder (Recorder.attach); close() when the stream ends."""

    def __init__(self, recorder: Recorder, node: _Node, max_queued: int) -> None:
        self._recorder = recorder
        self._node = node
        self.node_id = node.node_id
        self.queue: deque[_Work] = deque()
        self._slots = asyncio.Semaphore(max_queued)
        self._outstanding = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        """Fails with the error that made recording this stream's work fail."""
        self.failed.add_done_callback(_retrieve)
        self.closed = False

    @property
    def node(self) -> Versioned[inventory_pb2.Node]:
        """The node record as last written or read (mod revision 0 before the first read)."""
        return self._node.current()

    async def record_batch(self, item: Evaluated) -> asyncio.Future[BatchStep | None]:
        """Queue a batch; waits while MAX_QUEUED_BATCHES works are outstanding. The future
        resolves once the batch is recorded (or found a duplicate); call release() after
        acknowledging it."""
        await self._acquire()
        return self._submit(item, None)

    async def change(self, change: Change) -> asyncio.Future[BatchStep | None]:
        """Queue a change of the node record; its slot is released once it is recorded."""
        await self._acquire()
        done = self._submit(None, change)
        done.add_done_callback(lambda _: self.release())
        return done

    def others_attached(self) -> bool:
        """Whether another stream of the same node is attached to this recorder now."""
        return self._node.streams > 1 if not self.closed else self._node.streams > 0

    async def drain(self) -> None:
        """Wait until every submitted work is recorded and released."""
        await self._idle.wait()

    def release(self) -> None:
        """Free the slot of one recorded work."""
        self._outstanding -= 1
        self._slots.release()
        if not self._outstanding:
            self._idle.set()

    async def close(self, last: Change | None = None) -> None:
        """Detach from the recorder, first recording `last` (the stream's goodbye) if given, even
        after a failure; errors of `last` are not raised."""
        try:
            if last is not None:
                self.failed = asyncio.get_running_loop().create_future()  # a new chance
                self.failed.add_done_callback(_retrieve)
                self._outstanding += 1
                self._idle.clear()
                done = self._submit(None, last)
                done.add_done_callback(lambda _: self.release())
                with contextlib.suppress(Exception):
                    await done
        finally:
            if not self.closed:
                self.closed = True
                self._recorder._detach(self)

    async def _acquire(self) -> None:
        if self.failed.done():
            self.failed.result()  # raises what failed the stream
        await self._slots.acquire()
        self._outstanding += 1
        self._idle.clear()

    def _submit(self, batch: Evaluated | None, change: Change | None) -> asyncio.Future[BatchStep | None]:
        done: asyncio.Future[BatchStep | None] = asyncio.get_running_loop().create_future()
        done.add_done_callback(_retrieve)
        if self.failed.done():
            done.set_exception(self.failed.exception() or Unavailable("the stream failed"))
            return done
        if not self._recorder.running():
            done.set_exception(STOPPED)
            return done
        self.queue.append(_Work(self, batch, change, done))
        self._node.pending += 1
        self._recorder._ready(self)
        return done

    def fail(self, error: BaseException) -> None:
        """Fail this stream: every queued work and the stream itself raise `error`."""
        if not self.failed.done():
            self.failed.set_exception(error)
        while self.queue:
            work = self.queue.popleft()
            self._node.pending -= 1
            if not work.done.done():
                work.done.set_exception(error)


@dataclass(slots=True)
class _Plan:
    """What one attempt at a group writes, and what each work's outcome is."""

    nodes: list[tuple[inventory_pb2.Node, int]] = field(default_factory=list)
    alerts: list[tuple[alert_pb2.Alert, int]] = field(default_factory=list)
    steps: list[BatchStep | None] = field(default_factory=list)


class Recorder:
    """The writer of one replica's batches and node records; attach() one handle per stream.

    The writer task runs while streams are attached and stops by itself when the last one is
    closed and nothing is queued."""

    def __init__(
        self,
        store: Store,
        *,
        max_keys: int = MAX_TXN_KEYS,
        max_batches: int = MAX_GROUP_BATCHES,
        max_queued: int = MAX_QUEUED_BATCHES,
        cache_size: int = ALERT_CACHE_SIZE,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self._store = store
        self._max_keys = max_keys
        self._max_batches = max_batches
        self._max_queued = max_queued
        self._cache_size = cache_size
        self._alerts: OrderedDict[str, Versioned[alert_pb2.Alert] | None] = OrderedDict()
        self._nodes: dict[str, _Node] = {}
        self._streams = 0
        self._ready_streams: deque[RecorderStream] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._max_in_flight = max_in_flight
        self._in_flight: set[asyncio.Task[None]] = set()
        self._busy: set[str] = set()  # the keys of the transactions in flight
        self.transactions = 0
        """Transactions committed so far (for tests)."""

    # -- streams ---------------------------------------------------------------------------
    def attach(self, node_id: str) -> RecorderStream:
        """A handle for one stream of `node_id`; starts the writer if it is not running."""
        node = self._nodes.get(node_id)
        if node is None:
            node = self._nodes[node_id] = _Node(node_id)
        node.streams += 1
        self._streams += 1
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="recorder")
        return RecorderStream(self, node, self._max_queued)

    def _detach(self, stream: RecorderStream) -> None:
        node = stream._node
        node.streams -= 1
        self._streams -= 1
        self._forget_if_unused(node)
        self._wake.set()

    def _forget_if_unused(self, node: _Node) -> None:
        if not node.streams and not node.pending and self._nodes.get(node.node_id) is node:
            del self._nodes[node.node_id]

    def _ready(self, stream: RecorderStream) -> None:
        if len(stream.queue) == 1:
            self._ready_streams.append(stream)
        self._wake.set()

    # -- the writer ------------------------------------------------------------------------
    def running(self) -> bool:
        """Whether the writer task is running (it is while streams are attached, unless cancelled)."""
        return self._task is not None and not self._task.done()

    async def _run(self) -> None:
        """Take groups and commit them, up to MAX_IN_FLIGHT at once over disjoint keys, until no
        stream is attached and nothing is queued or in flight."""
        try:
            while True:
                if self._ready_streams and len(self._in_flight) < self._max_in_flight:
                    taken, keys = self._take()
                    if taken:
                        self._busy |= keys
                        task = asyncio.create_task(self._commit(taken, keys), name="recorder-commit")
                        self._in_flight.add(task)
                        continue
                elif not self._ready_streams and not self._streams and not self._in_flight:
                    return
                self._wake.clear()
                await self._wake.wait()
        finally:
            # Cancelled (the server stops): nothing queued will be recorded, say so.
            for task in self._in_flight:
                task.cancel()
            if self._in_flight:
                await asyncio.gather(*self._in_flight, return_exceptions=True)
            while self._ready_streams:
                self._ready_streams.popleft().fail(STOPPED)

    async def _commit(self, taken: list[_Work], keys: set[str]) -> None:
        try:
            await self._record(taken)
        except asyncio.CancelledError:
            self._fail([work for work in taken if not work.done.done()], STOPPED)
            raise
        except Exception as exc:  # a bug: fail what was taken, keep serving the others
            log.exception("recorder: recording %d works failed", len(taken))
            self._fail(taken, Unavailable(f"recording failed: {exc}"))
        finally:
            self._busy -= keys
            task = asyncio.current_task()
            if task is not None:
                self._in_flight.discard(task)
            for work in taken:
                work.stream._node.pending -= 1
                self._forget_if_unused(work.stream._node)
            self._wake.set()

    def _take(self) -> tuple[list[_Work], set[str]]:
        """The next group and its keys: whole queue prefixes of the ready streams, oldest ready
        first, as long as the node records and distinct alerts fit one transaction and none is a
        key of a transaction in flight (a stream whose next work needs one waits, so each node's
        works stay in order). A batch with more alerts than one transaction holds goes alone
        (commit_batches splits it)."""
        taken: list[_Work] = []
        keys: set[str] = set()
        batches = 0
        full = False
        for _ in range(len(self._ready_streams)):
            stream = self._ready_streams.popleft()
            while stream.queue:
                work = stream.queue[0]
                wanted = {"node/" + stream.node_id}
                if work.batch is not None:
                    wanted.update(work.batch.groups.keys())
                if not self._busy.isdisjoint(wanted):
                    break
                grown = len(keys | wanted)
                too_many = work.batch is not None and batches >= self._max_batches
                if taken and (grown > self._max_keys or too_many):
                    full = True
                    break
                taken.append(stream.queue.popleft())
                keys |= wanted
                batches += work.batch is not None
                if grown > self._max_keys:  # a batch too large for one transaction, alone
                    full = True
                    break
            if stream.queue:
                self._ready_streams.append(stream)  # the rest waits behind the streams not yet served
            if full:
                break
        return taken, keys

    async def _record(self, taken: list[_Work]) -> None:
        by_node: dict[str, list[_Work]] = {}
        for work in taken:
            by_node.setdefault(work.stream.node_id, []).append(work)
        nodes = {node_id: works[0].stream._node for node_id, works in by_node.items()}
        if len(taken) == 1 and taken[0].batch is not None:
            keys = 1 + len(taken[0].batch.groups)
            if keys > self._max_keys:
                await self._record_alone(taken[0])
                return
        try:
            await self._read_missing(nodes.values(), taken)
        except Exception as exc:
            self._fail(taken, exc)
            return
        conflicts: dict[str, int] = {}
        for attempt in range(MAX_ATTEMPTS):
            plan = self._plan(by_node, nodes)
            works = [work for node_works in by_node.values() for work in node_works]
            if not plan.nodes and not plan.alerts:
                self._resolve(works, plan.steps)
                return
            try:
                revision = await self._store.commit_records(plan.nodes, plan.alerts)
            except Stale as stale:
                self._refresh(stale, nodes)
                for node_id, moved in stale.nodes.items():
                    conflicts[node_id] = conflicts.get(node_id, 0) + 1
                    if moved is None:
                        error = Unavailable(f"node {node_id} vanished from the store; reconnect")
                    elif conflicts[node_id] >= NODE_CONFLICTS:
                        error = Unavailable(
                            f"node {node_id}: its record keeps changing (is its agent connected to "
                            "another replica?); retry"
                        )
                    else:
                        continue
                    self._fail(by_node.pop(node_id), error)
                if not by_node:
                    return
                await asyncio.sleep(random.uniform(0, 0.005 * 2**attempt))
                continue
            except Exception as exc:
                # The outcome is unknown (a timeout may have committed): forget what the group
                # involved, so the next use reads it again, and fail its streams.
                for node in nodes.values():
                    node.value = None
                for fingerprint in self._fingerprints(taken):
                    self._alerts.pop(fingerprint, None)
                self._fail(works, exc)
                return
            self.transactions += 1
            for record, _ in plan.nodes:
                nodes[record.node_id].value = Versioned(record, revision)
            for alert, _ in plan.alerts:
                alert.revision = revision
                self._remember(alert.fingerprint, Versioned(alert, revision))
            metrics.alerts_committed(plan.alerts)
            self._resolve(works, plan.steps)
            return
        works = [work for node_works in by_node.values() for work in node_works]
        batches = [w.batch.batch.seq for w in works if w.batch is not None]
        seqs = f"batches {min(batches)}..{max(batches)}" if batches else "node records"
        self._fail(works, Unavailable(f"{seqs} of {len(by_node)} nodes lost {MAX_ATTEMPTS} races; retry"))

    async def _record_alone(self, work: _Work) -> None:
        """A batch with more alerts than one transaction holds, in chunks (commit_batches)."""
        assert work.batch is not None
        node = work.stream._node
        try:
            await self._read_missing([node], [])
            outcome = await commit_batches(self._store, [work.batch], node.current())
        except Exception as exc:
            node.value = None
            for fingerprint in work.batch.groups:
                self._alerts.pop(fingerprint, None)
            self._fail([work], exc)
            return
        for fingerprint in work.batch.groups:  # commit_batches read and wrote them itself
            self._alerts.pop(fingerprint, None)
        node.value = outcome.node
        self.transactions += outcome.transactions
        self._resolve([work], outcome.steps)

    def _plan(self, by_node: dict[str, list[_Work]], nodes: dict[str, _Node]) -> _Plan:
        plan = _Plan()
        findings: dict[str, dict[str, Group]] = {}  # fingerprint -> node -> findings, in order
        now: dict[str, int] = {}
        for node_id, works in by_node.items():
            base = nodes[node_id].current()
            record, changed = base.value, False
            for work in works:
                item = work.batch
                if item is None:
                    assert work.change is not None
                    updated = inventory_pb2.Node()
                    updated.CopyFrom(record)
                    work.change(updated)
                    if updated != record:
                        record, changed = updated, True
                    plan.steps.append(None)
                elif item.batch.seq > record.last_seq:
                    before, record, changed = record, advance_node(record, item.batch, item.now_ns), True
                    plan.steps.append(BatchStep(False, item.findings, before, record))
                    for fingerprint, group in item.groups.items():
                        findings.setdefault(fingerprint, {}).setdefault(node_id, []).extend(group)
                        now[fingerprint] = max(now.get(fingerprint, 0), item.now_ns)
                else:
                    plan.steps.append(BatchStep(True, item.findings, record, record))
            if changed:
                plan.nodes.append((record, base.mod_revision))
        for fingerprint, per_node in findings.items():
            current = self._alerts.get(fingerprint)
            alert = merge_groups(current.value if current is not None else None, per_node, now[fingerprint])
            plan.alerts.append((alert, current.mod_revision if current is not None else 0))
        return plan

    async def _read_missing(self, nodes: Iterable[_Node], taken: list[_Work]) -> None:
        """Read the node records not known yet and the alerts not cached, all at once."""
        unknown = [node for node in nodes if node.value is None]
        missing = [fp for fp in self._fingerprints(taken) if fp not in self._alerts]
        records, alerts = await asyncio.gather(
            asyncio.gather(*(self._store.get_node(node.node_id) for node in unknown)),
            asyncio.gather(*(self._store.get_alert(fp) for fp in missing)),
        )
        for node, stored in zip(unknown, records, strict=True):
            node.value = stored or Versioned(inventory_pb2.Node(node_id=node.node_id), 0)
        for fingerprint, alert in zip(missing, alerts, strict=True):
            self._remember(fingerprint, alert)

    def _refresh(self, stale: Stale, nodes: dict[str, _Node]) -> None:
        for fingerprint, alert in stale.alerts.items():
            self._remember(fingerprint, alert)
        for node_id, record in stale.nodes.items():
            if record is not None:
                nodes[node_id].value = record

    @staticmethod
    def _fingerprints(works: list[_Work]) -> set[str]:
        return {fp for work in works if work.batch is not None for fp in work.batch.groups}

    def _remember(self, fingerprint: str, alert: Versioned[alert_pb2.Alert] | None) -> None:
        self._alerts[fingerprint] = alert
        self._alerts.move_to_end(fingerprint)
        while len(self._alerts) > self._cache_size:
            self._alerts.popitem(last=False)

    @staticmethod
    def _resolve(works: list[_Work], steps: Sequence[BatchStep | None]) -> None:
        for work, step in zip(works, steps, strict=True):
            if not work.done.done():
                work.done.set_result(step)

    @staticmethod
    def _fail(works: list[_Work], error: BaseException) -> None:
        for work in works:
            if not work.done.done():
                work.done.set_exception(error)
            work.stream.fail(error)
