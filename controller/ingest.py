"""From an agent's event batch to alerts in the store, exactly once.

The policy engine turns each event into findings; findings are grouped by fingerprint, merged
into the stored alerts, and written together with the node record that carries the batch's
sequence number, in one compare-and-swap transaction. So a batch is either recorded whole or not
at all: a batch re-sent after a lost acknowledgement, or one a stale stream on another replica
already recorded, is recognised by its sequence number and never counted twice.

On a replica the recorder (recorder.py) does the writing, for all streams together; this module
gives it the pieces (evaluate, advance_node, merge_groups) and keeps commit_batches, which records
one node's batches on its own: the recorder uses it for a batch with more distinct alerts than one
transaction holds.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import defaultdict
from dataclasses import dataclass

from telltale.controller import metrics
from telltale.controller.coverage import add_node_gaps
from telltale.controller.errors import Unavailable
from telltale.controller.store import MAX_BATCH_ALERTS, Conflict, Store, Versioned
from telltale.engine.alerts import coalesce, merge
from telltale.engine.evaluate import Finding, PolicySet
from telltale.v1 import agent_pb2, alert_pb2, common_pb2, inventory_pb2

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 12
UNKNOWN_APPLICATION = "unknown"
UINT64_MAX = 2**64 - 1

Group = list[tuple[Finding, common_pb2.Event, common_pb2.Workload]]


@dataclass(slots=True)
class BatchOutcome:
    """What applying one batch did; `node` is the node record as now stored."""

    node: Versioned[inventory_pb2.Node]
    duplicate: bool = False
    events: int = 0
    findings: int = 0
    alerts_written: int = 0


def saturating_add(total: int, delta: int) -> int:
    """`total + delta`, capped at the largest uint64 (counters are protobuf uint64 fields)."""
    return min(total + delta, UINT64_MAX)


def workloads_of(batch: agent_pb2.EventBatch, node_id: str) -> dict[str, common_pb2.Workload]:
    """The batch's workload descriptors by id, stamped with the node they run on."""
    workloads = {}
    for workload in batch.workloads:
        stamped = common_pb2.Workload()
        stamped.CopyFrom(workload)
        stamped.node_id = node_id
        workloads[workload.id] = stamped
    return workloads


def evaluate_batch(
    batch: agent_pb2.EventBatch, node_id: str, policies: PolicySet, now_ns: int
) -> dict[str, Group]:
    """Evaluate every event of a batch; findings grouped by alert fingerprint, in event order.

    Events of a workload the batch does not describe are attributed to application "unknown".
    """
    workloads = workloads_of(batch, node_id)
    groups: dict[str, Group] = defaultdict(list)
    for event in batch.events:
        workload = workloads.get(event.workload_id)
        if workload is None:
            workload = common_pb2.Workload(
                id=event.workload_id, application=UNKNOWN_APPLICATION, node_id=node_id
            )
            workloads[event.workload_id] = workload
        for finding in policies.policy_for(workload).evaluate(event, workload, now_ns):
            groups[finding.fingerprint].append((finding, event, workload))
    return groups


def advance_node(node: inventory_pb2.Node, batch: agent_pb2.EventBatch, now_ns: int) -> inventory_pb2.Node:
    """The node record after recording `batch`: sequence, gaps, loss counters and the coverage
    gaps its events report (a new message)."""
    updated = inventory_pb2.Node()
    updated.CopyFrom(node)
    if updated.last_seq and batch.seq > updated.last_seq + 1:
        missing = batch.seq - updated.last_seq - 1
        updated.sequence_gaps = saturating_add(updated.sequence_gaps, missing)
        log.warning("node %s: %d batches missing before seq %d", node.node_id, missing, batch.seq)
    updated.last_seq = batch.seq
    updated.dropped_records = saturating_add(updated.dropped_records, batch.dropped_records)
    updated.malformed_records = saturating_add(updated.malformed_records, batch.malformed_records)
    coverage_gaps = add_node_gaps(updated.coverage_gaps, batch)
    if coverage_gaps is not None:
        updated.coverage_gaps[:] = coverage_gaps
    updated.last_seen.FromNanoseconds(now_ns)
    return updated


def merge_groups(current: alert_pb2.Alert | None, per_node: dict[str, Group], now_ns: int) -> alert_pb2.Alert:
    """The alert after folding in the findings of one fingerprint, node by node in the order given:
    each node's findings coalesced into one (counts summed, times spanned) and merged as seen on
    that node. `current` is the alert as stored (None: new) and is not changed."""
    alert = current
    for node_id, group in per_node.items():
        [(finding, (event, workload))] = coalesce((f, (e, w)) for f, e, w in group)
        alert = merge(
            alert, finding, node_id=node_id, sample_event=event, sample_workload=workload, now_ns=now_ns
        )
    assert alert is not None, "at least one node's findings"
    return alert


async def _merged(
    store: Store, fingerprint: str, group: Group, node_id: str, now_ns: int
) -> tuple[alert_pb2.Alert, int]:
    current = await store.get_alert(fingerprint)
    alert = merge_groups(current.value if current is not None else None, {node_id: group}, now_ns)
    return alert, current.mod_revision if current is not None else 0


@dataclass(slots=True)
class Evaluated:
    """One batch, evaluated: its findings grouped by fingerprint, and when it was received."""

    batch: agent_pb2.EventBatch
    groups: dict[str, Group]
    now_ns: int

    @property
    def findings(self) -> int:
        return sum(map(len, self.groups.values()))


def evaluate(batch: agent_pb2.EventBatch, node_id: str, policies: PolicySet, now_ns: int) -> Evaluated:
    """Evaluate a batch for later recording (see recorder.py and commit_batches)."""
    return Evaluated(batch, evaluate_batch(batch, node_id, policies, now_ns), now_ns)


async def apply_batch(
    store: Store,
    batch: agent_pb2.EventBatch,
    node: Versioned[inventory_pb2.Node],
    policies: PolicySet,
    now_ns: int,
) -> BatchOutcome:
    """Record `batch` for `node` exactly once and return the node as stored afterwards.

    Concurrent writers of the same alerts (other nodes of the same application) make the
    transaction retry with backoff and jitter; after MAX_ATTEMPTS lost races it raises
    Unavailable and nothing of the batch is recorded (the agent sends it again).
    """
    item = evaluate(batch, node.value.node_id, policies, now_ns)
    outcome = await commit_batches(store, [item], node)
    return BatchOutcome(
        node=outcome.node,
        duplicate=outcome.duplicates[0],
        events=len(batch.events),
        findings=item.findings,
        alerts_written=outcome.alerts_written,
    )


@dataclass(frozen=True, slots=True)
class BatchStep:
    """What recording did with one of several batches: the node record around it (the same
    twice for a duplicate, which had been recorded before and was not counted again)."""

    duplicate: bool
    findings: int
    before: inventory_pb2.Node
    after: inventory_pb2.Node


@dataclass(slots=True)
class CommitOutcome:
    """What recording several batches together did: the node as stored, one step per batch."""

    node: Versioned[inventory_pb2.Node]
    steps: list[BatchStep]
    alerts_written: int = 0
    transactions: int = 0

    @property
    def duplicates(self) -> list[bool]:
        return [step.duplicate for step in self.steps]


async def commit_batches(
    store: Store, items: list[Evaluated], node: Versioned[inventory_pb2.Node]
) -> CommitOutcome:
    """Record evaluated batches of one node, in sequence order, exactly once and together: their
    findings merged per alert, written with the node record that carries the highest sequence
    number, in one compare-and-swap transaction (several only when the alerts exceed
    MAX_BATCH_ALERTS, and then the sequence number goes with the last).

    Batches at or below the node's recorded sequence number are duplicates and change nothing.
    Lost races retry as apply_batch() does; raises Unavailable after MAX_ATTEMPTS, and then
    nothing is recorded.
    """
    node_id = node.value.node_id
    outcome = CommitOutcome(node=node, steps=[])
    for attempt in range(MAX_ATTEMPTS):
        fresh, last_seq = [], node.value.last_seq
        for item in items:
            if item.batch.seq > last_seq:
                fresh.append(item)
                last_seq = item.batch.seq
        if not fresh:
            outcome.node = node
            outcome.steps = [BatchStep(True, item.findings, node.value, node.value) for item in items]
            return outcome
        merged: dict[str, Group] = {}
        for item in fresh:
            for fp, group in item.groups.items():
                merged.setdefault(fp, []).extend(group)
        now_ns = max(item.now_ns for item in fresh)
        groups = list(merged.items())
        written = 0
        try:
            # More distinct alerts than one transaction holds are written in chunks, the sequence
            # number with the last one; only then can a failure between chunks count the earlier
            # chunks twice. The shim's dedup (and the coalescer's bound) make this rare.
            for start in range(0, max(len(groups), 1), MAX_BATCH_ALERTS):
                chunk = groups[start : start + MAX_BATCH_ALERTS]
                alerts = [await _merged(store, fp, group, node_id, now_ns) for fp, group in chunk]
                record, steps = node.value, []
                if start + MAX_BATCH_ALERTS >= len(groups):
                    fresh_ids = {id(f) for f in fresh}
                    for item in items:
                        if id(item) in fresh_ids:
                            before, record = record, advance_node(record, item.batch, item.now_ns)
                            steps.append(BatchStep(False, item.findings, before, record))
                        else:
                            steps.append(BatchStep(True, item.findings, record, record))
                    outcome.steps = steps
                revision = await store.commit_batch(record, node.mod_revision, alerts)
                metrics.alerts_committed(alerts)
                outcome.transactions += 1
                node = Versioned(record, revision)
                written += len(alerts)
            outcome.node = node
            outcome.alerts_written += written
            return outcome
        except Conflict:
            stored = await store.get_node(node_id)
            if stored is None:
                raise Unavailable(f"node {node_id} vanished from the store") from None
            node = stored
            await asyncio.sleep(random.uniform(0, 0.005 * 2**attempt))
    seqs = f"{items[0].batch.seq}..{items[-1].batch.seq}"
    raise Unavailable(f"node {node_id}: batches {seqs} lost {MAX_ATTEMPTS} races for their alerts; retry")


async def apply_node_state(
    store: Store, state: agent_pb2.NodeState, node_id: str, policies: PolicySet, now_ns: int
) -> int:
    """Judge a node's host state by the default policy and record its findings; returns how many.

    Host state is a snapshot, not a numbered batch: each report counts as one more observation
    of what it shows. Each alert is written with compare-and-swap, retried on lost races.
    """
    findings = policies.compiled(policies.default).evaluate_node_state(state, node_id, now_ns)
    sample = common_pb2.Workload(node_id=node_id)
    # One observation per alert per report, however many checks of the policy found it.
    distinct = {finding.fingerprint: finding for finding in findings}
    for fingerprint, finding in distinct.items():
        group: Group = [(finding, common_pb2.Event(), sample)]
        for attempt in range(MAX_ATTEMPTS):
            alert, expected = await _merged(store, fingerprint, group, node_id, now_ns)
            try:
                await store.put_alert(alert, expected)
                metrics.alerts_committed([(alert, expected)])
                break
            except Conflict:
                await asyncio.sleep(random.uniform(0, 0.005 * 2**attempt))
        else:
            raise Unavailable(f"node {node_id}: host-state alert {finding.alert_type} keeps changing; retry")
    return len(distinct)
