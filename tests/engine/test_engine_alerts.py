"""Alerts: findings folded into deduplicated alerts, batches coalesced, filters."""

from __future__ import annotations

import pytest
from google.protobuf import timestamp_pb2

from telltale.engine.alerts import alert_matches, coalesce, expire_suppression, merge
from telltale.engine.evaluate import Finding, fingerprint
from telltale.v1 import alert_pb2, common_pb2, policy_pb2

NS = 1_000_000_000
T0 = 1_800_000_000 * NS
EVENT = common_pb2.Event(kind=common_pb2.EVENT_KIND_EXEC, count=1, exec=common_pb2.ExecDetail(path="/bin/sh"))
WORKLOAD = common_pb2.Workload(id="w-1", application="shop", component="api")


def finding(*, count: int = 1, time_ns: int = T0, subject: str = "/bin/sh", revision: int = 1) -> Finding:
    return Finding(
        fingerprint=fingerprint("process.shell_launched", "shop", "api", subject),
        alert_type="process.shell_launched",
        category=common_pb2.CATEGORY_PROCESS,
        priority=common_pb2.PRIORITY_P2,
        action=policy_pb2.RULE_ACTION_ALERT,
        title="Shell launched",
        summary=f"shop/api launched {subject}",
        subject=subject,
        application="shop",
        component="api",
        policy="Standard",
        policy_revision=revision,
        count=count,
        time_ns=time_ns,
        last_time_ns=time_ns,
    )


def ts(ns: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=ns // NS, nanos=ns % NS)


def fold(existing: alert_pb2.Alert | None, f: Finding, node: str, now_ns: int = T0) -> alert_pb2.Alert:
    return merge(existing, f, node_id=node, sample_event=EVENT, sample_workload=WORKLOAD, now_ns=now_ns)


def test_new_alert_is_open_with_the_finding() -> None:
    """The first finding creates an OPEN alert with its count, times, node, sample and policy."""
    alert = fold(None, finding(count=3), "node-b")
    assert alert.state == alert_pb2.ALERT_STATE_OPEN
    assert alert.occurrences == 3
    assert alert.first_seen == alert.last_seen == ts(T0)
    assert list(alert.nodes) == ["node-b"]
    assert alert.sample == EVENT
    assert alert.sample_workload == WORKLOAD
    assert (alert.policy, alert.policy_revision) == ("Standard", 1)
    assert alert.summary == "shop/api launched /bin/sh"
    assert alert.fingerprint == finding().fingerprint


def test_same_finding_merged_three_times_accumulates() -> None:
    """Counts 1, 1 and 5 make 7 occurrences; times span them; nodes are a sorted union."""
    alert = fold(None, finding(count=1, time_ns=T0 + 10 * NS), "node-c")
    alert = fold(alert, finding(count=1, time_ns=T0), "node-a")
    alert = fold(alert, finding(count=5, time_ns=T0 + 20 * NS, revision=2), "node-c")
    assert alert.occurrences == 7
    assert alert.first_seen == ts(T0)
    assert alert.last_seen == ts(T0 + 20 * NS)
    assert list(alert.nodes) == ["node-a", "node-c"]
    assert alert.policy_revision == 2


def test_merge_leaves_its_arguments_unchanged() -> None:
    """merge returns a new message and does not touch the existing one."""
    existing = fold(None, finding(), "node-a")
    snapshot = alert_pb2.Alert()
    snapshot.CopyFrom(existing)
    updated = fold(existing, finding(count=2), "node-b")
    assert existing == snapshot
    assert updated.occurrences == 3


def test_merge_keeps_the_triage_state_and_takes_the_latest_priority() -> None:
    """An acknowledged alert stays acknowledged; priority follows the latest evaluation."""
    existing = fold(None, finding(), "node-a")
    existing.state = alert_pb2.ALERT_STATE_ACKNOWLEDGED
    later = finding()._replace(priority=common_pb2.PRIORITY_P1)
    alert = fold(existing, later, "node-a")
    assert alert.state == alert_pb2.ALERT_STATE_ACKNOWLEDGED
    assert alert.priority == common_pb2.PRIORITY_P1
    assert len(alert.history) == 0


def _suppressed(until_ns: int) -> alert_pb2.Alert:
    alert = fold(None, finding(), "node-a")
    alert.state = alert_pb2.ALERT_STATE_SUPPRESSED
    alert.suppressed_until.CopyFrom(ts(until_ns))
    return alert


def test_expired_suppression_reopens_on_a_new_occurrence() -> None:
    """A suppression that has ended reopens the alert and records why, by telltale."""
    alert = fold(_suppressed(T0 + 60 * NS), finding(), "node-a", now_ns=T0 + 61 * NS)
    assert alert.state == alert_pb2.ALERT_STATE_OPEN
    assert not alert.HasField("suppressed_until")
    (change,) = alert.history
    assert (change.state, change.actor, change.reason) == (
        alert_pb2.ALERT_STATE_OPEN,
        "telltale",
        "suppression expired",
    )
    assert change.time == ts(T0 + 61 * NS)


def test_running_suppression_stays_suppressed() -> None:
    """Before its end, a suppression holds while occurrences still count."""
    alert = fold(_suppressed(T0 + 60 * NS), finding(), "node-a", now_ns=T0 + 59 * NS)
    assert alert.state == alert_pb2.ALERT_STATE_SUPPRESSED
    assert alert.occurrences == 2
    assert len(alert.history) == 0


def test_expire_suppression_without_a_new_occurrence() -> None:
    """expire_suppression reopens an ended suppression and leaves others alone."""
    assert expire_suppression(_suppressed(T0), now_ns=T0 - 1) is None
    reopened = expire_suppression(_suppressed(T0), now_ns=T0)
    assert reopened is not None
    assert reopened.state == alert_pb2.ALERT_STATE_OPEN
    assert expire_suppression(fold(None, finding(), "n"), now_ns=T0) is None


def test_coalesce_sums_counts_per_fingerprint() -> None:
    """A batch collapses to one finding per fingerprint with summed count, spanning times, earliest sample."""
    batch = [
        (finding(count=1, time_ns=T0 + 5), "sample-1"),
        (finding(count=2, subject="/bin/bash"), "sample-2"),
        (finding(count=4, time_ns=T0 + 1), "sample-3"),
        (finding(count=3, time_ns=T0 + 9), "sample-4"),
    ]
    (sh, sample), (bash, bash_sample) = coalesce(batch)
    assert (sh.subject, sh.count, sh.time_ns, sh.last_time_ns, sample) == (
        "/bin/sh",
        8,
        T0 + 1,
        T0 + 9,
        "sample-3",
    )
    assert (bash.count, bash_sample) == (2, "sample-2")


def test_coalesced_finding_merges_like_its_parts() -> None:
    """Merging a coalesced batch gives the same occurrences and times as merging each finding."""
    parts = [finding(count=1, time_ns=T0 + 3), finding(count=2, time_ns=T0), finding(count=4, time_ns=T0 + 7)]
    one_by_one: alert_pb2.Alert | None = None
    for part in parts:
        one_by_one = fold(one_by_one, part, "node-a")
    ((combined, _),) = coalesce((p, None) for p in parts)
    at_once = fold(None, combined, "node-a")
    assert one_by_one is not None
    assert (at_once.occurrences, at_once.first_seen, at_once.last_seen) == (
        one_by_one.occurrences,
        one_by_one.first_seen,
        one_by_one.last_seen,
    )


# Filters.

ALERT = alert_pb2.Alert(
    alert_type="process.shell_launched",
    category=common_pb2.CATEGORY_PROCESS,
    priority=common_pb2.PRIORITY_P2,
    application="shop",
    component="api",
    nodes=["node-a", "node-b"],
    state=alert_pb2.ALERT_STATE_OPEN,
    last_seen=ts(T0),
)


@pytest.mark.parametrize(
    ("filter_", "expected"),
    [
        (alert_pb2.AlertFilter(), True),
        (alert_pb2.AlertFilter(priorities=[common_pb2.PRIORITY_P1, common_pb2.PRIORITY_P2]), True),
        (alert_pb2.AlertFilter(priorities=[common_pb2.PRIORITY_P1]), False),
        (alert_pb2.AlertFilter(categories=[common_pb2.CATEGORY_NETWORK]), False),
        (alert_pb2.AlertFilter(alert_types=["process.shell_launched"]), True),
        (alert_pb2.AlertFilter(alert_types=["network.privileged_port"]), False),
        (alert_pb2.AlertFilter(applications=["billing"]), False),
        (alert_pb2.AlertFilter(components=["api", "web"]), True),
        (alert_pb2.AlertFilter(nodes=["node-b", "node-z"]), True),
        (alert_pb2.AlertFilter(nodes=["node-z"]), False),
        (alert_pb2.AlertFilter(states=[alert_pb2.ALERT_STATE_SUPPRESSED]), False),
        (alert_pb2.AlertFilter(seen_after=ts(T0)), True),
        (alert_pb2.AlertFilter(seen_after=ts(T0 + 1)), False),
        (alert_pb2.AlertFilter(seen_before=ts(T0 + 1)), True),
        (alert_pb2.AlertFilter(seen_before=ts(T0)), False),
        (alert_pb2.AlertFilter(applications=["shop"], states=[alert_pb2.ALERT_STATE_ACKNOWLEDGED]), False),
        (alert_pb2.AlertFilter(applications=["shop"], priorities=[common_pb2.PRIORITY_P2]), True),
    ],
)
def test_alert_filter(filter_: alert_pb2.AlertFilter, expected: bool) -> None:
    """Every non-empty filter field must match; time bounds apply to last_seen."""
    assert alert_matches(ALERT, filter_) is expected
