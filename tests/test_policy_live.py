"""A policy change judges the very next behaviour of a workload that keeps running."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import grpc
import pytest
from helpers import behave

from telltale.devcluster import LocalCluster, wait_for
from telltale.netutil import free_tcp_port
from telltale.v1 import (
    alert_pb2,
    alert_pb2_grpc,
    inventory_pb2,
    inventory_pb2_grpc,
    policy_pb2,
    policy_pb2_grpc,
)

pytestmark = pytest.mark.e2e

LIVE = """
apiVersion: telltale.dev/v1
kind: AlertPolicy
metadata:
  name: Live
spec:
  rules:
    network.listen_all_interfaces: {{}}
    process.shell_launched:
      enabled: {shell}
"""


class Workload:
    """A `behave.py --stdin` workload under the shim, driven one command at a time."""

    def __init__(self, cluster: LocalCluster, app: str) -> None:
        cmd = cluster.telltale_cmd(
            "run", "--app", app, "--socket", str(cluster.socket_path), "--", *behave("--stdin")
        )
        self.process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def do(self, command: str) -> None:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline().strip() == "ok", f"workload failed on {command!r}"

    def close(self) -> int:
        assert self.process.stdin is not None
        self.process.stdin.write("exit\n")
        self.process.stdin.close()
        return self.process.wait(timeout=30)


@pytest.fixture
def workload(cluster: LocalCluster) -> Iterator[Workload]:
    running = Workload(cluster, "live-app")
    try:
        yield running
    finally:
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait()
        for pipe in (running.process.stdin, running.process.stdout):
            if pipe is not None and not pipe.closed:
                pipe.close()


def _alerts(channel: grpc.Channel) -> dict[tuple[str, str], alert_pb2.Alert]:
    response = alert_pb2_grpc.AlertServiceStub(channel).ListAlerts(
        alert_pb2.ListAlertsRequest(filter=alert_pb2.AlertFilter(applications=["live-app"])), timeout=10
    )
    return {(a.alert_type, a.subject): a for a in response.alerts}


def _node(channel: grpc.Channel) -> inventory_pb2.Node:
    return (
        inventory_pb2_grpc.InventoryServiceStub(channel)
        .ListNodes(inventory_pb2.ListNodesRequest(), timeout=10)
        .nodes[0]
    )


def test_a_policy_change_judges_the_next_behaviour_of_a_running_workload(
    cluster: LocalCluster, channel: grpc.Channel, workload: Workload
) -> None:
    """With shell alerts off, a shell goes unreported; turned on, the same workload's next shell alerts."""
    stub = policy_pb2_grpc.PolicyServiceStub(channel)
    stub.CreatePolicy(policy_pb2.CreatePolicyRequest(document=LIVE.format(shell="false")))
    stub.AssignPolicy(
        policy_pb2.AssignPolicyRequest(
            assignment=policy_pb2.PolicyAssignment(application="live-app", policy="Live")
        )
    )

    # A shell, then a listener: once the listener's alert is there, the shell's event was judged.
    first_port = free_tcp_port()
    workload.do("shell one")
    workload.do(f"listen {first_port}")
    wait_for(
        lambda: ("network.listen_all_interfaces", f"tcp/{first_port}") in _alerts(channel),
        30,
        "the first listener's alert",
    )
    assert not [key for key in _alerts(channel) if key[0] == "process.shell_launched"]

    applied_before = _node(channel).applied_policy_revision
    current = stub.GetPolicy(policy_pb2.GetPolicyRequest(name="Live")).policy
    updated = stub.UpdatePolicy(
        policy_pb2.UpdatePolicyRequest(document=LIVE.format(shell="true"), expected_revision=current.revision)
    ).policy
    assert updated.revision == current.revision + 1
    # The agent acknowledging a newer policy state proves the controller holds it too.
    wait_for(
        lambda: _node(channel).applied_policy_revision > applied_before and _node(channel).in_sync,
        30,
        "the node to apply the new policy state",
    )

    second_port = free_tcp_port()
    workload.do("shell two")
    workload.do(f"listen {second_port}")
    wait_for(
        lambda: ("network.listen_all_interfaces", f"tcp/{second_port}") in _alerts(channel),
        30,
        "the second listener's alert",
    )
    shells = [a for (kind, _), a in _alerts(channel).items() if kind == "process.shell_launched"]
    assert len(shells) == 1
    assert shells[0].policy == "Live"
    assert shells[0].policy_revision == updated.revision
    assert shells[0].occurrences == 1
    assert workload.close() == 0
