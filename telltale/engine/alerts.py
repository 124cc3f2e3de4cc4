"""Alerts: findings deduplicated by fingerprint, and the filters that select them.

Everything here is pure: functions take messages and return new ones, never changing their
arguments, and take the current time as ``now_ns``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from telltale.engine.evaluate import Finding
from telltale.engine.timefmt import from_timestamp, to_timestamp
from telltale.v1 import alert_pb2, common_pb2

__all__ = ["SYSTEM_ACTOR", "alert_matches", "coalesce", "expire_suppression", "merge"]

SYSTEM_ACTOR = "telltale"
"""The actor recorded in history entries telltale makes itself."""

S = TypeVar("S")


def merge(
    existing: alert_pb2.Alert | None,
    finding: Finding,
    *,
    node_id: str,
    sample_event: common_pb2.Event,
    sample_workload: common_pb2.Workload,
    now_ns: int,
) -> alert_pb2.Alert:
    """Fold ``finding``, seen on node ``node_id``, into the alert with its fingerprint.

    With no ``existing`` alert, returns a new OPEN alert with the finding's count as
    occurrences and the sample as given. Otherwise returns a copy of ``existing`` with
    occurrences increased by the finding's count, first and last seen widened, the node added
    (nodes stay sorted and unique), priority, title, policy and revision taken from the finding,
    and the triage state kept, except that a suppression that ended at or before ``now_ns``
    reopens the alert (see :func:`expire_suppression`). The first sample is kept. The store
    revision is left as it was: the store sets it.
    """
    if existing is None:
        return alert_pb2.Alert(
            fingerprint=finding.fingerprint,
            alert_type=finding.alert_type,
            category=finding.category,
            priority=finding.priority,
            title=finding.title,
            summary=finding.summary,
            application=finding.application,
            component=finding.component,
            subject=finding.subject,
            first_seen=to_timestamp(finding.time_ns),
            last_seen=to_timestamp(finding.last_time_ns),
            occurrences=finding.count,
            nodes=[node_id] if node_id else [],
            sample=sample_event,
            sample_workload=sample_workload,
            policy=finding.policy,
            policy_revision=finding.policy_revision,
            state=alert_pb2.ALERT_STATE_OPEN,
        )
    alert = alert_pb2.Alert()
    alert.CopyFrom(existing)
    alert.occurrences += finding.count
    if not existing.HasField("first_seen") or finding.time_ns < from_timestamp(existing.first_seen):
        alert.first_seen.CopyFrom(to_timestamp(finding.time_ns))
    if not existing.HasField("last_seen") or finding.last_time_ns > from_timestamp(existing.last_seen):
        alert.last_seen.CopyFrom(to_timestamp(finding.last_time_ns))
    if node_id and node_id not in existing.nodes:
        nodes = sorted({*existing.nodes, node_id})
        del alert.nodes[:]
        alert.nodes.extend(nodes)
    alert.priority = finding.priority
    alert.title = finding.title
    alert.category = finding.category
    alert.policy = finding.policy
    alert.policy_revision = finding.policy_revision
    if not existing.HasField("sample"):
        alert.sample.CopyFrom(sample_event)
        alert.sample_workload.CopyFrom(sample_workload)
    _reopen_if_expired(alert, now_ns)
    return alert


def _reopen_if_expired(alert: alert_pb2.Alert, now_ns: int) -> bool:
    if (
        alert.state != alert_pb2.ALERT_STATE_SUPPRESSED
        or not alert.HasField("suppressed_until")
        or from_timestamp(alert.suppressed_until) > now_ns
    ):
        return False
    alert.state = alert_pb2.ALERT_STATE_OPEN
    alert.ClearField("suppressed_until")
    alert.history.append(
        alert_pb2.StateChange(
            state=alert_pb2.ALERT_STATE_OPEN,
            actor=SYSTEM_ACTOR,
            reason="suppression expired",
            time=to_timestamp(now_ns),
        )
    )
    return True


def expire_suppression(alert: alert_pb2.Alert, *, now_ns: int) -> alert_pb2.Alert | None:
    """If ``alert`` is SUPPRESSED and its suppression ended at or before ``now_ns``, return a
    reopened copy (OPEN, suppression cleared, a history entry by "telltale" saying "suppression
    expired"); otherwise return None. A suppression without an end never expires."""
    copy = alert_pb2.Alert()
    copy.CopyFrom(alert)
    return copy if _reopen_if_expired(copy, now_ns) else None


def coalesce(items: Iterable[tuple[Finding, S]]) -> list[tuple[Finding, S]]:
    """Group a batch's findings by fingerprint: one (finding, sample) per fingerprint.

    Counts are summed; the first and last times span the group; the rest of the finding and
    the sample come from the group's earliest finding (the first one listed, among equals).
    Groups keep the order in which their fingerprints first appear.
    """
    groups: dict[str, list[tuple[Finding, S]]] = {}
    for item in items:
        groups.setdefault(item[0].fingerprint, []).append(item)
    out: list[tuple[Finding, S]] = []
    for group in groups.values():
        if len(group) == 1:
            out.append(group[0])
            continue
        base, sample = min(group, key=lambda item: item[0].time_ns)
        combined = base._replace(
            count=sum(f.count for f, _ in group),
            last_time_ns=max(f.last_time_ns for f, _ in group),
        )
        out.append((combined, sample))
    return out


def alert_matches(alert: alert_pb2.Alert, filter: alert_pb2.AlertFilter) -> bool:
    """True when ``alert`` passes every non-empty field of ``filter``.

    List fields match when the alert's value is one of them (``nodes``: when the alert was seen
    on one of them). ``seen_after`` keeps alerts last seen at or after it, ``seen_before`` those
    last seen strictly before it.
    """
    if filter.priorities and alert.priority not in filter.priorities:
        return False
    if filter.categories and alert.category not in filter.categories:
        return False
    if filter.alert_types and alert.alert_type not in filter.alert_types:
        return False
    if filter.applications and alert.application not in filter.applications:
        return False
    if filter.components and alert.component not in filter.components:
        return False
    if filter.states and alert.state not in filter.states:
        return False
    if filter.nodes and not set(filter.nodes).intersection(alert.nodes):
        return False
    last_seen = from_timestamp(alert.last_seen)
    if filter.HasField("seen_after") and last_seen < from_timestamp(filter.seen_after):
        return False
    return not (filter.HasField("seen_before") and last_seen >= from_timestamp(filter.seen_before))
