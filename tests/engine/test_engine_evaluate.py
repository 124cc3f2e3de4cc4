"""Evaluation: findings, fingerprints, dispatch, and the choice of a workload's policy."""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

import pytest
from google.protobuf import timestamp_pb2

from telltale.engine.builtin import load_builtin_policies
from telltale.engine.evaluate import CompiledPolicy, PolicySet, fingerprint
from telltale.engine.model import Policy
from telltale.engine.policy import parse_document
from telltale.v1 import common_pb2

NS = 1_000_000_000
NOW = 1_800_000_000 * NS
BUILTIN = load_builtin_policies()
MAX_ALERT = CompiledPolicy.compile(BUILTIN["Max Alert"])
SHOP_API = common_pb2.Workload(id="w-1", application="shop", component="api", node_id="node-a")


def shell(*, pid: int = 10, count: int = 1, repeat: bool = False, seconds: int = 0) -> common_pb2.Event:
    event = common_pb2.Event(
        kind=common_pb2.EVENT_KIND_EXEC,
        count=count,
        repeat=repeat,
        process=common_pb2.ProcessInfo(pid=pid, exe="/usr/bin/python3", euid=1000),
        exec=common_pb2.ExecDetail(path="/bin/sh"),
    )
    if seconds:
        event.time.CopyFrom(timestamp_pb2.Timestamp(seconds=seconds, nanos=5))
    return event


def test_finding_carries_rule_policy_and_event_facts() -> None:
    """A finding names its type, priority, policy and revision, and the event's time and count."""
    policy = dataclasses.replace(BUILTIN["Max Alert"], revision=4)
    (finding,) = CompiledPolicy.compile(policy).evaluate(shell(seconds=1_700_000_000), SHOP_API, NOW)
    assert finding.alert_type == "process.shell_launched"
    assert finding.title == "Shell launched"
    assert (finding.application, finding.component, finding.subject) == ("shop", "api", "/bin/sh")
    assert (finding.policy, finding.policy_revision) == ("Max Alert", 4)
    assert finding.time_ns == finding.last_time_ns == 1_700_000_000 * NS + 5
    assert finding.count == 1


def test_finding_without_event_time_takes_now() -> None:
    """An event with no time is dated by the caller's now_ns."""
    (finding,) = MAX_ALERT.evaluate(shell(), SHOP_API, NOW)
    assert finding.time_ns == NOW


def test_repeat_summary_counts_its_occurrences() -> None:
    """A repeat summary standing for 5 occurrences yields a finding of count 5."""
    (finding,) = MAX_ALERT.evaluate(shell(count=5, repeat=True), SHOP_API, NOW)
    assert finding.count == 5


def test_fingerprint_ignores_node_and_process() -> None:
    """The same behaviour from another process on another node has the same fingerprint."""
    elsewhere = common_pb2.Workload(id="w-9", application="shop", component="api", node_id="node-b")
    (a,) = MAX_ALERT.evaluate(shell(pid=10), SHOP_API, NOW)
    (b,) = MAX_ALERT.evaluate(shell(pid=99), elsewhere, NOW + NS)
    assert a.fingerprint == b.fingerprint == fingerprint("process.shell_launched", "shop", "api", "/bin/sh")


@pytest.mark.parametrize(
    "other",
    [
        ("process.exec_from_writable_dir", "shop", "api", "/bin/sh"),
        ("process.shell_launched", "shop2", "api", "/bin/sh"),
        ("process.shell_launched", "shop", "web", "/bin/sh"),
        ("process.shell_launched", "shop", "api", "/bin/bash"),
        ("process.shell_launched", "sho", "papi", "/bin/sh"),  # no ambiguity from joining fields
    ],
)
def test_fingerprint_depends_on_type_application_component_subject(other: tuple[str, str, str, str]) -> None:
    """Changing any of the four identifying fields changes the fingerprint."""
    base = fingerprint("process.shell_launched", "shop", "api", "/bin/sh")
    assert len(base) == 32
    assert int(base, 16) >= 0
    assert fingerprint(*other) != base


def test_fingerprint_is_stable_across_releases() -> None:
    """The digest is fixed: stored alerts keep matching new findings after an upgrade."""
    assert (
        fingerprint("process.shell_launched", "shop", "api", "/bin/sh") == "082c8efeae8ff070338d66fa8fb47649"
    )


def test_one_event_can_raise_several_findings() -> None:
    """A shell run from /tmp is both a shell and a program from a writable directory."""
    event = shell()
    event.exec.path = "/tmp/sh"
    found = MAX_ALERT.evaluate(event, SHOP_API, NOW)
    assert sorted(f.alert_type for f in found) == ["process.exec_from_writable_dir", "process.shell_launched"]


def test_events_no_rule_looks_at_raise_nothing() -> None:
    """An event kind no enabled rule handles yields no findings."""
    assert MAX_ALERT.evaluate(common_pb2.Event(kind=common_pb2.EVENT_KIND_UNSPECIFIED), SHOP_API, NOW) == []
    connect = common_pb2.Event(
        kind=common_pb2.EVENT_KIND_CONNECT,
        socket=common_pb2.SocketDetail(address=common_pb2.SocketAddress(family="inet", address="10.1.1.1")),
    )
    assert CompiledPolicy.compile(BUILTIN["Standard"]).evaluate(connect, SHOP_API, NOW) == []


def test_summary_of_a_workload_without_application_names_the_workload() -> None:
    """Without an application name the summary falls back to the workload id."""
    (finding,) = MAX_ALERT.evaluate(shell(), common_pb2.Workload(id="w-7"), NOW)
    assert finding.summary == "workload w-7 launched /bin/sh"


# PolicySet: which policy applies to a workload.


def _named(name: str) -> Policy:
    return Policy(name=name)


POLICIES = {name: _named(name) for name in ("Default", "App", "Component", "Override")}


@pytest.mark.parametrize(
    ("workload", "assignments", "expected"),
    [
        (common_pb2.Workload(application="shop", component="api"), {}, "Default"),
        (common_pb2.Workload(application="shop", component="api"), {("shop", ""): "App"}, "App"),
        (
            common_pb2.Workload(application="shop", component="api"),
            {("shop", ""): "App", ("shop", "api"): "Component"},
            "Component",
        ),
        (
            common_pb2.Workload(application="shop", component="api", policy_override="Override"),
            {("shop", ""): "App", ("shop", "api"): "Component"},
            "Override",
        ),
        (
            common_pb2.Workload(application="shop", component="api", policy_override="Missing"),
            {("shop", "api"): "Component"},
            "Component",
        ),
        (common_pb2.Workload(application="shop", component="web"), {("shop", "api"): "Component"}, "Default"),
        (common_pb2.Workload(application="shop"), {("shop", ""): "App"}, "App"),
        (common_pb2.Workload(application="shop"), {("shop", ""): "Gone"}, "Default"),
        (common_pb2.Workload(application="billing"), {("shop", ""): "App"}, "Default"),
    ],
)
def test_policy_precedence(
    workload: common_pb2.Workload, assignments: dict[tuple[str, str], str], expected: str
) -> None:
    """Override beats component assignment beats application assignment beats the default."""
    policies = PolicySet(POLICIES, "Default", assignments)
    assert policies.name_for(workload) == expected
    assert policies.policy_for(workload).policy.name == expected


def test_policy_set_caches_compiled_policies() -> None:
    """The same policy is compiled once per set, and reused by an update that leaves it unchanged."""
    policies = PolicySet(BUILTIN, "Standard", {("shop", ""): "Max Alert"})
    shop = common_pb2.Workload(application="shop")
    first = policies.policy_for(shop)
    assert policies.policy_for(shop) is first
    kept = policies.updated(default="Max Alert")
    assert kept.policy_for(shop) is first
    changed = dict(BUILTIN, **{"Max Alert": dataclasses.replace(BUILTIN["Max Alert"], revision=2)})
    assert policies.updated(policies=changed).policy_for(shop) is not first


def test_policy_set_needs_a_known_default() -> None:
    """A default that names no policy is refused."""
    with pytest.raises(ValueError, match="Nope"):
        PolicySet(POLICIES, "Nope", {})


def test_policy_changes_change_the_outcome() -> None:
    """A new revision with the rule disabled stops the findings."""
    text = "apiVersion: telltale.dev/v1\nkind: AlertPolicy\nmetadata: {name: P}\nspec:\n  rules:\n"
    on = parse_document(text + "    process.shell_launched: {}\n")
    off = parse_document(text + "    process.shell_launched: {enabled: false}\n")
    before = PolicySet({"P": on}, "P", MappingProxyType({}))
    after = before.updated(policies={"P": off})
    assert before.policy_for(SHOP_API).evaluate(shell(), SHOP_API, NOW)
    assert after.policy_for(SHOP_API).evaluate(shell(), SHOP_API, NOW) == []
