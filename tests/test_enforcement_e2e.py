"""Enforcement end to end: a block rule of the policy in force makes the agent's firewall refuse a
workload's connection, and a policy change lets it through again.

Two network namespaces the test creates: "node" runs etcd, the controller, the agent and the
workload (all on its loopback, so the agent's nftables table lives there), and "far" holds a TCP
server at FAR, reached through a veth pair. The host's own firewall is never touched.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import behave
from netns import host_tables_unchanged, in_netns, inside, ip, network_namespace, require_libnftables

from telltale.devcluster import LocalCluster, wait_for

pytestmark = pytest.mark.e2e

NEAR, FAR, PORT = "10.66.0.1", "10.66.0.2", 8080

FENCE = """
apiVersion: telltale.dev/v1
kind: AlertPolicy
metadata:
  name: Fence
spec:
  rules:
    network.blocklisted_destination:
      action: {action}
      params:
        networks: ["{far}/32"]
"""

SERVER = f"""
import socket
server = socket.create_server(("{FAR}", {PORT}), backlog=64)
print("listening", flush=True)
while True:
    server.accept()[0].close()
"""


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str]]:
    """The node namespace and the far one, joined by a veth pair, with a server listening at FAR;
    afterwards, the host's own nftables tables are as they were. Skips without libnftables."""
    require_libnftables()
    with (
        host_tables_unchanged(),
        network_namespace("tt-node") as node,
        network_namespace("tt-far") as far,
    ):
        ip("-n", node, "link", "add", "tt-near", "type", "veth", "peer", "name", "tt-far", "netns", far)
        ip("-n", node, "addr", "add", f"{NEAR}/24", "dev", "tt-near")
        ip("-n", far, "addr", "add", f"{FAR}/24", "dev", "tt-far")
        ip("-n", node, "link", "set", "tt-near", "up")
        ip("-n", far, "link", "set", "tt-far", "up")
        server = subprocess.Popen(
            in_netns(far, sys.executable, "-c", SERVER), stdout=subprocess.PIPE, text=True
        )
        try:
            assert server.stdout is not None
            assert server.stdout.readline().strip() == "listening"
            yield node, far
        finally:
            server.kill()
            server.wait()
            if server.stdout is not None:
                server.stdout.close()


@pytest.fixture
def cluster(namespaces: tuple[str, str], tmp_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path, netns=namespaces[0]) as local:
        yield local


def enforcing(cluster: LocalCluster) -> dict[str, Any]:
    """The node's enforcement state, as `telltale nodes list -o json` shows it."""
    listed = cluster.cli("nodes", "list", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    nodes = [json.loads(line) for line in listed.stdout.splitlines() if line.strip()]
    return dict(nodes[0].get("enforcement", {})) if nodes else {}


def apply_fence(cluster: LocalCluster, tmp_path: Path, action: str) -> None:
    """Apply the Fence policy with this action and make it the default."""
    document = tmp_path / f"fence-{action}.yaml"
    document.write_text(FENCE.format(action=action, far=FAR))
    for args in (("policy", "apply", "-f", str(document)), ("policy", "default", "Fence")):
        done = cluster.cli(*args)
        assert done.returncode == 0, f"telltale {' '.join(args)}: {done.stderr}"


def connect(cluster: LocalCluster) -> subprocess.CompletedProcess[str]:
    return cluster.run_workload("fenced", behave("--connect", f"{FAR}:{PORT}"))


def test_a_block_rule_refuses_the_connection_and_a_policy_change_lets_it_through(
    cluster: LocalCluster, namespaces: tuple[str, str], tmp_path: Path
) -> None:
    """Blocked: the workload's connect fails at once with ECONNREFUSED; the table survives an agent
    restart; with the rule back to alert, the same connection succeeds."""
    node = namespaces[0]
    assert connect(cluster).returncode == 0, "the far server is reachable before any policy"

    apply_fence(cluster, tmp_path, "block")
    wait_for(lambda: enforcing(cluster).get("blocked_networks") == 1, 30, "the agent to enforce the block")
    refused = connect(cluster)
    assert refused.returncode != 0
    assert "ConnectionRefusedError" in refused.stderr, refused.stderr

    table = inside(node, "nft", "list", "table", "inet", "telltale")
    assert table.returncode == 0
    assert FAR in table.stdout
    cluster.stop("agent")
    assert "ConnectionRefusedError" in connect(cluster).stderr, "the block outlives the agent"
    cluster.start_agent()

    apply_fence(cluster, tmp_path, "alert")
    wait_for(lambda: "blocked_networks" not in enforcing(cluster), 30, "the agent to lift the block")
    assert connect(cluster).returncode == 0
