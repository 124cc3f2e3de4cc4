"""Policy dry runs on the events this controller replica received recently.

Each replica keeps its own window of the batches its agent streams recorded: bounded in count
and in age, oldest dropped first, empty after a restart. It is not the cluster's history: a
node streaming to another replica is not in it. A dry run (PolicyService.TestPolicy) says so by
reporting how far back the window reaches. :func:`dry_run` compares a candidate policy with the
policies in force on such a window.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator

from telltale.controller.ingest import UNKNOWN_APPLICATION, workloads_of
from telltale.engine import policy as policy_model
from telltale.engine.evaluate import CompiledPolicy, Finding, PolicySet
from telltale.v1 import agent_pb2, common_pb2, policy_pb2

DEFAULT_MAX_EVENTS = 100_000
DEFAULT_MAX_AGE_S = 24 * 60 * 60
DEFAULT_MAX_BYTES = 64 * 1024 * 1024

_NS = 1_000_000_000

Item = tuple[int, common_pb2.Event, common_pb2.Workload]
"""(time received in ns since the epoch, the event, the workload it came from)."""

_Kept = tuple[int, bytes, bytes]
"""An item as kept: the event and its workload serialized (the workload's bytes shared by the
events of one batch). Serializing is cheaper than copying a message, and the bytes are smaller;
a dry run, which is rare, pays for parsing them back."""


def batch_events(
    batch: agent_pb2.EventBatch, node_id: str
) -> list[tuple[common_pb2.Event, common_pb2.Workload]]:
    """Each event of `batch` with its workload, as ingest judges it: stamped with the node, and
    application "unknown" for a workload the batch does not describe."""
    workloads = workloads_of(batch, node_id)
    items = []
    for event in batch.events:
        workload = workloads.get(event.workload_id)
        if workload is None:
            workload = workloads[event.workload_id] = common_pb2.Workload(
                id=event.workload_id, application=UNKNOWN_APPLICATION, node_id=node_id
            )
        items.append((event, workload))
    return items


class RecentEvents:
    """A bounded window of received events, in the order received.

    At most `max_events` events younger than `max_age_s` seconds, of at most `max_bytes` encoded
    bytes in all (each event's bytes plus its workload's), are kept; the oldest go first. Events
    are kept serialized, out of their batch (a kept sub-message would keep the whole batch
    alive). Not thread-safe: add and read from the event loop.
    """

    def __init__(
        self,
        *,
        max_events: int = DEFAULT_MAX_EVENTS,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        if max_events < 1:
            raise ValueError(f"max_events must be at least 1, not {max_events}")
        if max_age_s <= 0:
            raise ValueError(f"max_age_s must be positive, not {max_age_s}")
        self.max_events = max_events
        self.max_age_ns = int(max_age_s * _NS)
        self.max_bytes = max_bytes
        self._bytes = 0
        self._items: deque[_Kept] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def add(self, events: Iterable[tuple[common_pb2.Event, common_pb2.Workload]], now_ns: int) -> None:
        """Record `events` as received at `now_ns`, then drop what is too old."""
        serialized: dict[int, bytes] = {}  # id(workload) -> its bytes, for workloads given again
        keep: list[tuple[common_pb2.Event, bytes]] = []
        for event, workload in events:
            workload_bytes = serialized.get(id(workload))
            if workload_bytes is None:
                workload_bytes = serialized[id(workload)] = workload.SerializeToString()
            keep.append((event, workload_bytes))
        self._keep(keep, now_ns)

    def add_batch(self, batch: agent_pb2.EventBatch, node_id: str, now_ns: int) -> None:
        """Record the events of `batch` as batch_events() gives them, received at `now_ns`, then
        drop what is too old (the same as add(batch_events(batch, node_id), now_ns), cheaper)."""
        described: dict[str, bytes] = {}
        for workload in batch.workloads:
            stamped = common_pb2.Workload()
            stamped.CopyFrom(workload)
            stamped.node_id = node_id
            described[workload.id] = stamped.SerializeToString()
        keep: list[tuple[common_pb2.Event, bytes]] = []
        for event in batch.events:
            workload_bytes = described.get(event.workload_id)
            if workload_bytes is None:
                unknown = common_pb2.Workload(
                    id=event.workload_id, application=UNKNOWN_APPLICATION, node_id=node_id
                )
                workload_bytes = described[event.workload_id] = unknown.SerializeToString()
            keep.append((event, workload_bytes))
        self._keep(keep, now_ns)

    def _keep(self, events: list[tuple[common_pb2.Event, bytes]], now_ns: int) -> None:
        append = self._items.append
        added = 0
        for event, workload_bytes in events:
            event_bytes = event.SerializeToString()
            append((now_ns, event_bytes, workload_bytes))
            added += len(event_bytes) + len(workload_bytes)
        self._bytes += added
        self.expire(now_ns)

    def expire(self, now_ns: int) -> None:
        """Drop the events received more than the maximum age before `now_ns`, and the oldest
        beyond the count and size limits."""
        limit = now_ns - self.max_age_ns
        items = self._items
        while items and (items[0][0] < limit or len(items) > self.max_events or self._bytes > self.max_bytes):
            _, event_bytes, workload_bytes = items.popleft()
            self._bytes -= len(event_bytes) + len(workload_bytes)

    @property
    def oldest_ns(self) -> int | None:
        """When the oldest event still held was received; None when the window is empty."""
        return self._items[0][0] if self._items else None

    def since(self, start_ns: int) -> Iterator[Item]:
        """The events received at or after `start_ns`, oldest first.

        Iterates over a snapshot, so events added meanwhile are not seen and do not disturb it.
        The events of one workload share one Workload message: do not modify what is yielded.
        """
        return _parsed([item for item in self._items if item[0] >= start_ns])


def _parsed(kept: list[_Kept]) -> Iterator[Item]:
    workloads: dict[bytes, common_pb2.Workload] = {}
    for received_ns, event_bytes, workload_bytes in kept:
        workload = workloads.get(workload_bytes)
        if workload is None:
            workload = workloads[workload_bytes] = common_pb2.Workload.FromString(workload_bytes)
        yield received_ns, common_pb2.Event.FromString(event_bytes), workload


_Tally = dict[str, tuple[Finding, int]]
"""Findings by fingerprint: the first finding and the occurrences of all of them."""


def _tally(tally: _Tally, findings: list[Finding]) -> None:
    for finding in findings:
        seen = tally.get(finding.fingerprint)
        tally[finding.fingerprint] = (seen[0] if seen else finding, (seen[1] if seen else 0) + finding.count)


def _test_findings(tally: _Tally, fingerprints: Iterable[str]) -> list[policy_pb2.PolicyTestFinding]:
    chosen = sorted(
        (tally[fp] for fp in fingerprints),
        key=lambda f: (f[0].priority, f[0].alert_type, f[0].application, f[0].component, f[0].subject),
    )
    return [
        policy_pb2.PolicyTestFinding(
            alert_type=f.alert_type,
            application=f.application,
            component=f.component,
            subject=f.subject,
            priority=f.priority,
            occurrences=occurrences,
            fingerprint=f.fingerprint,
        )
        for f, occurrences in chosen
    ]


def dry_run(
    policies: PolicySet,
    candidate: policy_model.Policy,
    window: Iterator[Item],
    applications: frozenset[str],
    now_ns: int,
) -> policy_pb2.TestPolicyResponse:
    """What `candidate` would change on `window` compared with `policies` (pure; no I/O).

    The candidate stands in for the policy of its name: only workloads that policy applies to
    are judged, or every workload when no policy has that name. `applications`, when not empty,
    limits the events to those applications. Each event is judged by the candidate and by the
    workload's policy in force, both at `now_ns` (which decides whether exceptions have expired).
    """
    compiled = CompiledPolicy.compile(candidate, countries=policies.countries)
    replaces = candidate.name in policies.policies
    current: _Tally = {}
    proposed: _Tally = {}
    considered = 0
    for _, event, workload in window:
        if applications and workload.application not in applications:
            continue
        name = policies.name_for(workload)
        if replaces and name != candidate.name:
            continue
        considered += 1
        _tally(current, policies.compiled(name).evaluate(event, workload, now_ns))
        _tally(proposed, compiled.evaluate(event, workload, now_ns))
    return policy_pb2.TestPolicyResponse(
        added=_test_findings(proposed, proposed.keys() - current.keys()),
        removed=_test_findings(current, current.keys() - proposed.keys()),
        events_considered=considered,
        changed=sum(
            1
            for fp in proposed.keys() & current.keys()
            if proposed[fp][0].priority != current[fp][0].priority
        ),
    )
