"""From an agent's event batch to alerts in the store.

The policy engine turns each event into findings; findings are grouped by fingerprint so a batch
costs one compare-and-swap write per distinct alert, however many repeats it carries.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass

from telltale.controller.store import Conflict, Store
from telltale.engine.alerts import merge
from telltale.engine.evaluate import Finding, PolicySet
from telltale.v1 import agent_pb2, alert_pb2, common_pb2

log = logging.getLogger(__name__)

MAX_CAS_ATTEMPTS = 8
UNKNOWN_APPLICATION = "unknown"


@dataclass(slots=True)
class IngestResult:
    """What one batch produced."""

    events: int = 0
    findings: int = 0
    alerts_written: int = 0


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
    batch: agent_pb2.EventBatch,
    workloads: dict[str, common_pb2.Workload],
    policies: PolicySet,
    now_ns: int,
) -> dict[str, list[tuple[Finding, common_pb2.Event, common_pb2.Workload]]]:
    """Evaluate every event of a batch; findings grouped by alert fingerprint, in event order."""
    groups: dict[str, list[tuple[Finding, common_pb2.Event, common_pb2.Workload]]] = defaultdict(list)
    for event in batch.events:
        workload = workloads.get(event.workload_id)
        if workload is None:
            workload = common_pb2.Workload(id=event.workload_id, application=UNKNOWN_APPLICATION)
            workloads[event.workload_id] = workload
        for finding in policies.policy_for(workload).evaluate(event, workload, now_ns):
            groups[finding.fingerprint].append((finding, event, workload))
    return groups


async def record_findings(
    store: Store,
    fingerprint: str,
    group: list[tuple[Finding, common_pb2.Event, common_pb2.Workload]],
    node_id: str,
    now_ns: int,
) -> alert_pb2.Alert:
    """Merge a group of findings into the stored alert with compare-and-swap, retrying on conflict.

    Raises Conflict when the key keeps changing under us (MAX_CAS_ATTEMPTS lost races).
    """
    for _ in range(MAX_CAS_ATTEMPTS):
        current = await store.get_alert(fingerprint)
        alert = current.value if current is not None else None
        for finding, event, workload in group:
            alert = merge(
                alert, finding, node_id=node_id, sample_event=event, sample_workload=workload, now_ns=now_ns
            )
        assert alert is not None
        try:
            alert.revision = await store.put_alert(alert, current.mod_revision if current else 0)
        except Conflict:
            continue
        return alert
    raise Conflict(f"alert {fingerprint}: too many concurrent updates")


async def ingest_batch(
    store: Store, batch: agent_pb2.EventBatch, node_id: str, policies: PolicySet, now_ns: int
) -> IngestResult:
    """Evaluate a batch and record its alerts. Store errors propagate (the batch is not acknowledged)."""
    workloads = workloads_of(batch, node_id)
    groups = evaluate_batch(batch, workloads, policies, now_ns)
    result = IngestResult(events=len(batch.events), findings=sum(len(g) for g in groups.values()))
    for fingerprint, group in groups.items():
        await record_findings(store, fingerprint, group, node_id, now_ns)
        result.alerts_written += 1
    return result
