"""Host state end to end: etcd, controller and agent run inside a network namespace the test
creates, so the agent samples that namespace; toggling promiscuous mode and IP forwarding there
raises the matching node alerts, read back through the API with the CLI (run in the namespace,
where the controller's loopback address is)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from netns import ip, network_namespace, sysctl

from telltale.devcluster import LocalCluster, wait_for

pytestmark = pytest.mark.e2e

PROMISCUOUS = "node.promiscuous_interface"
FORWARDING = "node.ip_forwarding"


@pytest.fixture
def netns() -> Iterator[str]:
    """A network namespace with loopback up and forwarding off, removed afterwards."""
    with network_namespace("tt-hs") as name:
        sysctl(name, "net.ipv4.ip_forward=0")
        sysctl(name, "net.ipv6.conf.all.forwarding=0")
        # An interface that stays down: no IPv6 link-local address appears later to change state.
        ip("-n", name, "link", "add", "tt0", "type", "veth", "peer", "name", "tt1")
        yield name


@pytest.fixture
def cluster(netns: str, tmp_path: Path) -> Iterator[LocalCluster]:
    """Controller (with its embedded etcd) and agent inside the namespace."""
    with LocalCluster(tmp_path, netns=netns) as local:
        yield local


def host_alerts(cluster: LocalCluster) -> dict[tuple[str, str], dict[str, Any]]:
    """Host-state alerts of the two types, by (type, subject)."""
    run = cluster.cli("alerts", "list", "-o", "json", "--type", PROMISCUOUS, "--type", FORWARDING)
    assert run.returncode == 0, run.stderr
    found = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
    return {(a["alert_type"], a["subject"]): a for a in found}


def occurrences(alert: dict[str, Any]) -> int:
    return int(alert.get("occurrences", 0))  # uint64 is a string in JSON


def test_promiscuous_mode_and_ip_forwarding_in_the_agents_namespace_raise_node_alerts(
    netns: str, cluster: LocalCluster
) -> None:
    """Each toggle reaches the controller as one changed snapshot and raises its node alert; an
    unchanged state is not reported again."""
    promiscuous_key = (PROMISCUOUS, "tt0")
    forwarding_key = (FORWARDING, "net.ipv4.ip_forward")
    latest: dict[tuple[str, str], dict[str, Any]] = {}

    def seen(
        condition: Callable[[dict[tuple[str, str], dict[str, Any]]], bool], what: str
    ) -> dict[tuple[str, str], dict[str, Any]]:
        def check() -> bool:
            nonlocal latest
            latest = host_alerts(cluster)
            return bool(condition(latest))

        try:
            wait_for(check, 60, what, interval=0.2)
        except TimeoutError:
            pytest.fail(f"{what}: alerts are {latest}\nagent log:\n{cluster.log_tail('agent', 30)}")
        return latest

    ip("-n", netns, "link", "set", "dev", "tt0", "promisc", "on")
    alerts = seen(lambda a: promiscuous_key in a, "the promiscuous interface alert")
    assert forwarding_key not in alerts
    assert occurrences(alerts[promiscuous_key]) == 1

    sysctl(netns, "net.ipv4.ip_forward=1")
    alerts = seen(
        lambda a: forwarding_key in a and occurrences(a[promiscuous_key]) >= 2, "the IP forwarding alert"
    )
    # One snapshot with promiscuous mode alone, one with forwarding too: nothing else was sent.
    assert occurrences(alerts[forwarding_key]) == 1
    assert occurrences(alerts[promiscuous_key]) == 2
    assert set(alerts) == {promiscuous_key, forwarding_key}
