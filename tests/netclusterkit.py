"""Shared by the multi-node tests (importable as `netclusterkit`): skipping where the harness cannot
run, a cluster fixture body with unique namespace names, and reading alerts and nodes."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from netns import host_tables_unchanged

from telltale.cli.client import every_page
from telltale.netcluster import NetCluster
from telltale.nodeagent.enforce import LIBNFTABLES_SONAME
from telltale.v1 import (
    alert_pb2,
    alert_pb2_grpc,
    inventory_pb2,
    inventory_pb2_grpc,
    policy_pb2,
    policy_pb2_grpc,
)


def require_harness() -> None:
    """Skip unless root, `ip netns`, nft and libnftables are all available."""
    if os.geteuid() != 0:
        pytest.skip("the network harness needs root")
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            pytest.skip(f"the {tool} command is not installed")
    probe = f"ttprobe-{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"network namespaces unavailable: {made.stderr.strip()}")
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    try:
        ctypes.CDLL(LIBNFTABLES_SONAME)
    except OSError:
        pytest.skip(f"{LIBNFTABLES_SONAME} is not installed (agents enforce inside their namespaces)")


@contextmanager
def net_cluster(tmp_path: Path, nodes: int = 3, **kwargs: Any) -> Iterator[NetCluster]:
    """A NetCluster with namespace names of its own, always removed; the host's nftables tables
    are checked unchanged afterwards."""
    require_harness()
    prefix = f"t{uuid.uuid4().hex[:6]}"
    with (
        host_tables_unchanged(),
        NetCluster(
            tmp_path / "cluster", nodes, prefix=prefix, state_file=tmp_path / "state.json", **kwargs
        ) as cluster,
    ):
        yield cluster


def alerts(channel: grpc.Channel) -> list[alert_pb2.Alert]:
    """Every alert of the cluster."""
    stub = alert_pb2_grpc.AlertServiceStub(channel)
    return [
        a
        for page in every_page(stub.ListAlerts, alert_pb2.ListAlertsRequest(), timeout=10)
        for a in page.alerts
    ]


def occurrences(cluster: NetCluster, alert_type: str, controller: str = "ctl-a") -> dict[str, int]:
    """Occurrences of `alert_type` per application, read through `controller`."""
    counts: dict[str, int] = {}
    with cluster.channel(controller) as channel:
        for alert in alerts(channel):
            if alert.alert_type == alert_type:
                counts[alert.application] = counts.get(alert.application, 0) + alert.occurrences
    return counts


def node(cluster: NetCluster, node_id: str, controller: str = "") -> inventory_pb2.Node:
    """The inventory's record of `node_id`."""
    names = [controller] if controller else ["ctl-a", "ctl-b"]
    for name in names:
        if not cluster.running(name):
            continue
        with cluster.channel(name) as channel:
            stub = inventory_pb2_grpc.InventoryServiceStub(channel)
            return stub.GetNode(inventory_pb2.GetNodeRequest(node_id=node_id), timeout=5).node
    raise AssertionError("no controller is running")


def apply_policy(cluster: NetCluster, document: str, *, default: str = "") -> None:
    """Create the policy `document` (YAML); make it the default if `default` names it."""
    with cluster.channel() as channel:
        stub = policy_pb2_grpc.PolicyServiceStub(channel)
        stub.CreatePolicy(policy_pb2.CreatePolicyRequest(document=document), timeout=10)
        if default:
            stub.SetDefaultPolicy(policy_pb2.SetDefaultPolicyRequest(name=default), timeout=10)


def figure(line: str) -> None:
    """Print a measured figure (shown with `pytest -s`)."""
    print(f"\nFIGURE: {line}", flush=True)


def names(prefix: str) -> Sequence[str]:
    """Namespaces `ip netns` lists whose name starts with `prefix`."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in listed.splitlines() if line.startswith(prefix)]
