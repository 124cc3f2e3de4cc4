"""Coverage gaps: the programs a workload ran that the shim could not observe, as short texts on
the node record (Node.coverage_gaps) and on the workload record (Workload.coverage_gaps).

A COVERAGE_GAP event gives one text per reason, such as "static binary /usr/bin/foo"; the node's
texts name the workload too: "static binary /usr/bin/foo (workload shop/api)". Both lists hold each
text once and at most a bounded number of texts: when full, the oldest make room for new ones.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

from telltale.controller.store import Store
from telltale.v1 import agent_pb2, common_pb2

MAX_NODE_GAPS = 100
MAX_WORKLOAD_GAPS = 50

_REASONS: dict[int, str] = {
    common_pb2.COVERAGE_GAP_REASON_STATIC: "static binary",
    common_pb2.COVERAGE_GAP_REASON_GO: "Go program",
    common_pb2.COVERAGE_GAP_REASON_SETUID: "set-user-ID program",
    common_pb2.COVERAGE_GAP_REASON_SETGID: "set-group-ID program",
    common_pb2.COVERAGE_GAP_REASON_FILE_CAPABILITIES: "program with file capabilities",
    common_pb2.COVERAGE_GAP_REASON_ENVIRONMENT_STRIPPED: "environment stripped for",
}


def gap_texts(event: common_pb2.Event) -> list[str]:
    """One text per reason of a COVERAGE_GAP event ("static binary /usr/bin/foo"); [] for other kinds."""
    if event.kind != common_pb2.EVENT_KIND_COVERAGE_GAP:
        return []
    gap = event.coverage_gap
    path = gap.path or "(unknown program)"
    return [f"{_REASONS.get(reason, 'unobserved program')} {path}" for reason in gap.reasons] or [
        f"unobserved program {path}"
    ]


def workload_label(workload: common_pb2.Workload | None) -> str:
    """ "application/component", or the application alone; "unknown" without a descriptor."""
    if workload is None or not workload.application:
        return "unknown"
    return f"{workload.application}/{workload.component}" if workload.component else workload.application


def merged(existing: Sequence[str], new: Iterable[str], limit: int) -> list[str] | None:
    """`existing` with the texts of `new` it lacks appended, the oldest dropped beyond `limit`;
    None when nothing changes."""
    result = list(existing)
    seen = set(result)
    for text in new:
        if text not in seen:
            seen.add(text)
            result.append(text)
    if len(result) == len(existing):
        return None
    return result[-limit:]


def gaps_by_workload(batch: agent_pb2.EventBatch) -> dict[str, list[str]]:
    """The gap texts of a batch's COVERAGE_GAP events, per workload id, in event order."""
    found: dict[str, list[str]] = defaultdict(list)
    for event in batch.events:
        if event.kind == common_pb2.EVENT_KIND_COVERAGE_GAP:
            found[event.workload_id].extend(gap_texts(event))
    return dict(found)


def node_gap_texts(batch: agent_pb2.EventBatch) -> list[str]:
    """The batch's gaps as the node lists them: each text followed by "(workload app/component)"."""
    described = {w.id: w for w in batch.workloads}
    return [
        f"{text} (workload {workload_label(described.get(workload_id))})"
        for workload_id, texts in gaps_by_workload(batch).items()
        for text in texts
    ]


def add_node_gaps(gaps: Sequence[str], batch: agent_pb2.EventBatch) -> list[str] | None:
    """The node's coverage gaps after `batch`, or None when the batch adds none."""
    new = node_gap_texts(batch)
    return merged(gaps, new, MAX_NODE_GAPS) if new else None


async def record_workload(store: Store, workload: common_pb2.Workload, new_gaps: Sequence[str]) -> None:
    """Write `workload` (a descriptor from a batch) keeping the gaps already stored for it and adding
    `new_gaps`. Workloads run on one node and report on one stream, so read-then-write is enough."""
    stored = await store.get_workload(workload.id)
    previous = list(stored.coverage_gaps) if stored is not None else []
    gaps = merged(previous, new_gaps, MAX_WORKLOAD_GAPS)
    if stored is not None and gaps is None:
        unchanged = common_pb2.Workload()
        unchanged.CopyFrom(workload)
        unchanged.coverage_gaps[:] = previous
        if unchanged == stored:
            return
    record = common_pb2.Workload()
    record.CopyFrom(workload)
    record.coverage_gaps[:] = previous if gaps is None else gaps
    await store.put_workload(record)
