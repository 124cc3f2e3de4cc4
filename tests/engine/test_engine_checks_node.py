"""Node and environment alert types: workload process starts, and host state reports."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from casetable import Case, fires, quiet, uncovered
from eventkit import (
    LOOPBACK,
    NOW,
    NS,
    PRIVATE_ETH,
    PUBLIC_ETH,
    SHOP_API,
    compiled,
    fired,
    interface,
    listener,
    node_state,
    start,
)

from telltale.engine.catalog import CATALOG
from telltale.engine.evaluate import evaluate_node_state, fingerprint
from telltale.v1 import agent_pb2, common_pb2, policy_pb2

ROOT = "node.workload_as_root"
CAPS = "node.dangerous_capabilities"
SECRETS = "node.secret_environment"
FORWARDING = "node.ip_forwarding"
PROMISCUOUS = "node.promiscuous_interface"
ASLR = "node.aslr_disabled"
PTRACE_SCOPE = "node.ptrace_scope_permissive"
PUBLIC = "node.public_listener"
HARDENING = "node.kernel_hardening"

EVENT_CASES = [
    fires("root", ROOT, start(euid=0), "/usr/bin/python3"),
    quiet("user", ROOT, start()),
    fires("sys_admin", CAPS, start(caps=["CAP_SYS_ADMIN", "CAP_CHOWN"]), "/usr/bin/python3 (CAP_SYS_ADMIN)"),
    fires(
        "two",
        CAPS,
        start(caps=["CAP_SYS_PTRACE", "CAP_NET_RAW"]),
        "/usr/bin/python3 (CAP_NET_RAW,CAP_SYS_PTRACE)",
    ),
    quiet("harmless", CAPS, start(caps=["CAP_NET_BIND_SERVICE"])),
    quiet("root", CAPS, start(euid=0, caps=["CAP_SYS_ADMIN"])),
    quiet("forked", CAPS, start(caps=["CAP_SYS_ADMIN"], forked=True)),
    quiet("permitted only", CAPS, start(permitted=["CAP_SYS_ADMIN"])),
    fires(
        "permitted included",
        CAPS,
        start(permitted=["CAP_SYS_ADMIN"]),
        "/usr/bin/python3 (CAP_SYS_ADMIN)",
        params="{include_permitted: true}",
    ),
    fires(
        "root included",
        CAPS,
        start(euid=0, caps=["CAP_SYS_ADMIN"]),
        "/usr/bin/python3 (CAP_SYS_ADMIN)",
        params="{ignore_root: false}",
    ),
    quiet("not listed", CAPS, start(caps=["CAP_NET_RAW"]), params="{capabilities: [CAP_SYS_ADMIN]}"),
    fires("secrets", SECRETS, start(secrets=["DB_PASSWORD", "API_TOKEN"]), "API_TOKEN,DB_PASSWORD"),
    quiet("none", SECRETS, start()),
    quiet("forked", SECRETS, start(secrets=["DB_PASSWORD"], forked=True)),
    quiet("ignored", SECRETS, start(secrets=["DB_PASSWORD"]), params="{ignore_names: ['DB_*']}"),
    fires(
        "partly ignored",
        SECRETS,
        start(secrets=["DB_PASSWORD", "AWS_SECRET"]),
        "AWS_SECRET",
        params="{ignore_names: ['DB_*']}",
    ),
]


@pytest.mark.parametrize("case", EVENT_CASES)
def test_node_event_case(case: Case) -> None:
    """Each node case on a process start fires with exactly its expected subjects, or stays quiet."""
    assert case.run() == list(case.expected)


def test_every_node_event_type_has_a_firing_and_a_quiet_case() -> None:
    """The table covers every event-based node alert type both ways."""
    assert uncovered(EVENT_CASES, common_pb2.CATEGORY_NODE) == []


def test_dangerous_capabilities_exception_by_path() -> None:
    """A program that needs a capability can be excepted by its path."""
    policy = compiled(f"{CAPS}:\n  exceptions:\n    - {{path: /usr/bin/ping, reason: ping}}\n")
    assert fired(policy, start(exe="/usr/bin/ping", caps=["CAP_NET_RAW"])) == []
    assert fired(policy, start(exe="/usr/bin/nc", caps=["CAP_NET_RAW"])) == ["/usr/bin/nc (CAP_NET_RAW)"]


# Host state.


@dataclass(frozen=True)
class StateCase:
    type_id: str
    state: agent_pb2.NodeState
    expected: tuple[str, ...]
    params: str = ""
    node_id: str = "node-a"

    def run(self) -> list[str]:
        body = f"{{params: {self.params}}}" if self.params else "{}"
        policy = compiled(f"{self.type_id}: {body}\n")
        return [f.subject for f in evaluate_node_state(policy, self.state, self.node_id, NOW)]


def state_case(name: str, type_id: str, state: agent_pb2.NodeState, *expected: str, **kw: str) -> object:
    return pytest.param(StateCase(type_id, state, expected, **kw), id=f"{type_id}:{name}")


PUBLIC_HOST = (LOOPBACK, PRIVATE_ETH, PUBLIC_ETH)
V6_HOST = (LOOPBACK, interface("eth2", "2001:4860::5/64"))

STATE_CASES = [
    state_case(
        "ipv4 on", FORWARDING, node_state(sysctls={"net.ipv4.ip_forward": "1"}), "net.ipv4.ip_forward"
    ),
    state_case(
        "both on",
        FORWARDING,
        node_state(sysctls={"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1\n"}),
        "net.ipv4.ip_forward",
        "net.ipv6.conf.all.forwarding",
    ),
    state_case("off", FORWARDING, node_state(sysctls={"net.ipv4.ip_forward": "0"})),
    state_case("unreported", FORWARDING, node_state()),
    state_case("garbled", FORWARDING, node_state(sysctls={"net.ipv4.ip_forward": "yes"})),
    state_case(
        "ignored node",
        FORWARDING,
        node_state(sysctls={"net.ipv4.ip_forward": "1"}),
        params="{ignore_nodes: [gw-*]}",
        node_id="gw-1",
    ),
    state_case(
        "other node",
        FORWARDING,
        node_state(sysctls={"net.ipv4.ip_forward": "1"}),
        "net.ipv4.ip_forward",
        params="{ignore_nodes: [gw-*]}",
    ),
    state_case(
        "promiscuous",
        PROMISCUOUS,
        node_state(interfaces=[interface("eth0", promiscuous=True), LOOPBACK]),
        "eth0",
    ),
    state_case("normal", PROMISCUOUS, node_state()),
    state_case(
        "ignored interface",
        PROMISCUOUS,
        node_state(interfaces=[interface("br-1", promiscuous=True)]),
        params="{ignore_interfaces: [br-*]}",
    ),
    state_case(
        "aslr 0", ASLR, node_state(sysctls={"kernel.randomize_va_space": "0"}), "kernel.randomize_va_space"
    ),
    state_case(
        "aslr 1", ASLR, node_state(sysctls={"kernel.randomize_va_space": "1"}), "kernel.randomize_va_space"
    ),
    state_case("aslr 2", ASLR, node_state(sysctls={"kernel.randomize_va_space": "2"})),
    state_case(
        "aslr 1 accepted", ASLR, node_state(sysctls={"kernel.randomize_va_space": "1"}), params="{minimum: 1}"
    ),
    state_case(
        "scope 0",
        PTRACE_SCOPE,
        node_state(sysctls={"kernel.yama.ptrace_scope": "0"}),
        "kernel.yama.ptrace_scope",
    ),
    state_case("scope 1", PTRACE_SCOPE, node_state(sysctls={"kernel.yama.ptrace_scope": "1"})),
    state_case("no yama", PTRACE_SCOPE, node_state()),
    state_case(
        "scope 1 below 2",
        PTRACE_SCOPE,
        node_state(sysctls={"kernel.yama.ptrace_scope": "1"}),
        "kernel.yama.ptrace_scope",
        params="{minimum: 2}",
    ),
    state_case(
        "public address",
        PUBLIC,
        node_state(interfaces=PUBLIC_HOST, listening=[listener("8.8.4.4", 22)]),
        "tcp/8.8.4.4:22",
    ),
    state_case(
        "wildcard, public host",
        PUBLIC,
        node_state(interfaces=PUBLIC_HOST, listening=[listener("0.0.0.0", 22), listener("::", 22)]),
        "tcp/0.0.0.0:22",
        "tcp/[::]:22",
    ),
    state_case(
        "v6 wildcard", PUBLIC, node_state(interfaces=V6_HOST, listening=[listener("::", 80)]), "tcp/[::]:80"
    ),
    state_case(
        "v4 wildcard, v6-only public",
        PUBLIC,
        node_state(interfaces=V6_HOST, listening=[listener("0.0.0.0", 80)]),
    ),
    state_case(
        "wildcard, private host", PUBLIC, node_state(listening=[listener("0.0.0.0", 22), listener("::", 22)])
    ),
    state_case(
        "private address", PUBLIC, node_state(interfaces=PUBLIC_HOST, listening=[listener("10.0.0.5", 22)])
    ),
    state_case(
        "loopback", PUBLIC, node_state(interfaces=PUBLIC_HOST, listening=[listener("127.0.0.1", 5432)])
    ),
    state_case(
        "public interface down",
        PUBLIC,
        node_state(
            interfaces=[LOOPBACK, interface("eth1", "8.8.4.4/24", up=False)],
            listening=[listener("0.0.0.0", 22)],
        ),
    ),
    state_case(
        "ignored port",
        PUBLIC,
        node_state(interfaces=PUBLIC_HOST, listening=[listener("0.0.0.0", 443)]),
        params="{ignore_ports: [443]}",
    ),
    state_case(
        "internal network",
        PUBLIC,
        node_state(interfaces=PUBLIC_HOST, listening=[listener("8.8.4.4", 22)]),
        params="{internal_networks: [8.8.4.0/24]}",
    ),
    state_case(
        "two expectations off",
        HARDENING,
        node_state(
            sysctls={"kernel.kptr_restrict": "0", "kernel.dmesg_restrict": "1", "fs.suid_dumpable": "2"}
        ),
        "kernel.kptr_restrict",
        "fs.suid_dumpable",
    ),
    state_case(
        "all fine", HARDENING, node_state(sysctls={"kernel.kptr_restrict": "2", "fs.protected_symlinks": "1"})
    ),
    state_case(
        "own expectation",
        HARDENING,
        node_state(sysctls={"vm.mmap_min_addr": "0"}),
        "vm.mmap_min_addr",
        params="{expected: ['vm.mmap_min_addr>=4096']}",
    ),
    state_case(
        "at most",
        HARDENING,
        node_state(sysctls={"kernel.perf_event_paranoid": "3"}),
        params="{expected: ['kernel.perf_event_paranoid<=3']}",
    ),
]


@pytest.mark.parametrize("case", STATE_CASES)
def test_node_state_case(case: StateCase) -> None:
    """Each host state case fires with exactly its expected subjects, or stays quiet."""
    assert case.run() == list(case.expected)


def test_every_node_state_type_has_a_firing_and_a_quiet_case() -> None:
    """The host state table covers every host state alert type both ways."""
    table = [p.values[0] for p in STATE_CASES]  # type: ignore[attr-defined]
    for spec in CATALOG.values():
        if spec.node_state:
            mine = [c for c in table if c.type_id == spec.id]
            assert any(c.expected for c in mine), spec.id
            assert any(not c.expected for c in mine), spec.id


def test_node_finding_is_per_node_and_carries_no_application() -> None:
    """A host state finding has no application, names the node, and its fingerprint includes the node."""
    policy = compiled(f"{FORWARDING}: {{}}\n")
    state = node_state(sysctls={"net.ipv4.ip_forward": "1"}, seconds=1_700_000_000)
    (a,) = evaluate_node_state(policy, state, "node-a", NOW)
    (b,) = evaluate_node_state(policy, state, "node-b", NOW)
    assert (a.application, a.component) == ("", "")
    assert a.summary == "node node-a forwards IP packets (net.ipv4.ip_forward=1)"
    assert a.fingerprint == fingerprint(FORWARDING, "", "", "net.ipv4.ip_forward", "node-a")
    assert a.fingerprint != b.fingerprint
    assert a.time_ns == a.last_time_ns == 1_700_000_000 * NS
    assert a.count == 1
    assert (a.category, a.priority, a.policy) == (common_pb2.CATEGORY_NODE, common_pb2.PRIORITY_P3, "Test")


def test_node_state_without_time_takes_now() -> None:
    """A report with no time is dated by the caller's now_ns."""
    (finding,) = evaluate_node_state(
        compiled(f"{ASLR}: {{}}\n"), node_state(sysctls={"kernel.randomize_va_space": "0"}), "n", NOW
    )
    assert finding.time_ns == NOW


def test_public_listener_exceptions_by_binary_and_destination() -> None:
    """Host state exceptions apply on the listening program and on the exposed address."""
    policy = compiled(
        f"""
        {PUBLIC}:
          exceptions:
            - {{binary: /usr/sbin/sshd, reason: bastion}}
            - {{destination: 8.8.4.0/24, binary: /usr/sbin/nginx, reason: storefront}}
            - {{application: shop, reason: never applies to host state}}
        """
    )
    state = node_state(
        interfaces=PUBLIC_HOST,
        listening=[
            listener("0.0.0.0", 22, exe="/usr/sbin/sshd"),
            listener("0.0.0.0", 443, exe="/usr/sbin/nginx"),
            listener("0.0.0.0", 6379, exe="/usr/bin/redis-server"),
        ],
    )
    findings = evaluate_node_state(policy, state, "node-a", NOW)
    assert [f.subject for f in findings] == ["tcp/0.0.0.0:6379"]
    assert findings[0].summary == (
        "node node-a listens on public address 8.8.4.4 (tcp/0.0.0.0:6379 by /usr/bin/redis-server)"
    )


def test_expired_exception_no_longer_applies_to_host_state() -> None:
    """Host state exceptions expire like any other."""
    policy = compiled(
        f"""
        {PUBLIC}:
          exceptions:
            - {{binary: /usr/sbin/sshd, reason: migration, expires: "2027-01-15T00:00:00Z"}}
        """
    )
    state = node_state(interfaces=PUBLIC_HOST, listening=[listener("8.8.4.4", 22)])
    expiry = 1_799_971_200 * NS
    assert evaluate_node_state(policy, state, "n", expiry - 1) == []
    assert len(evaluate_node_state(policy, state, "n", expiry)) == 1


def test_event_evaluation_ignores_host_state_types_and_the_reverse() -> None:
    """Host state rules never see events, and event rules never see host state."""
    policy = compiled(f"{FORWARDING}: {{}}\n{ROOT}: {{}}\n")
    assert policy.active_types == frozenset({FORWARDING, ROOT})
    state = node_state(sysctls={"net.ipv4.ip_forward": "1"})
    assert [f.alert_type for f in evaluate_node_state(policy, state, "n", NOW)] == [FORWARDING]
    assert [f.alert_type for f in policy.evaluate(start(euid=0), SHOP_API, NOW)] == [ROOT]


def test_disabled_node_rule_and_action() -> None:
    """A disabled host state rule raises nothing; findings carry the rule's action (alert)."""
    state = node_state(sysctls={"kernel.randomize_va_space": "0"})
    assert evaluate_node_state(compiled(f"{ASLR}: {{enabled: false}}\n"), state, "n", NOW) == []
    (finding,) = evaluate_node_state(compiled(f"{ASLR}: {{priority: P1}}\n"), state, "n", NOW)
    assert finding.action == policy_pb2.RULE_ACTION_ALERT
    assert finding.priority == common_pb2.PRIORITY_P1
