"""The whole path, for real: shim in a workload → agent → gRPC → controller → etcd → API."""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Callable

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

POLICY = """
apiVersion: telltale.dev/v1
kind: AlertPolicy
metadata:
  name: E2E
  description: three alert types, one blocklisted loopback address
spec:
  rules:
    process.shell_launched:
      enabled: true
    network.listen_all_interfaces:
      enabled: true
    network.blocklisted_destination:
      enabled: true
      params:
        networks: ["127.0.0.77/32"]
"""


@pytest.fixture(scope="module")
def e2e_policy(channel: grpc.Channel) -> str:
    policy_pb2_grpc.PolicyServiceStub(channel).CreatePolicy(policy_pb2.CreatePolicyRequest(document=POLICY))
    return "E2E"


def alerts_of(channel: grpc.Channel, app: str) -> dict[str, alert_pb2.Alert]:
    """The application's alerts by alert type (each type appears once for these workloads).

    node.workload_as_root is left out: whether it fires depends on the user running the tests.
    """
    response = alert_pb2_grpc.AlertServiceStub(channel).ListAlerts(
        alert_pb2.ListAlertsRequest(filter=alert_pb2.AlertFilter(applications=[app])), timeout=10
    )
    by_type: dict[str, alert_pb2.Alert] = {}
    for alert in response.alerts:
        if alert.alert_type == "node.workload_as_root":
            continue
        assert alert.alert_type not in by_type, f"two alerts of type {alert.alert_type}"
        by_type[alert.alert_type] = alert
    return by_type


def poll_alerts(
    channel: grpc.Channel, app: str, done: Callable[[dict[str, alert_pb2.Alert]], bool]
) -> dict[str, alert_pb2.Alert]:
    latest: dict[str, alert_pb2.Alert] = {}

    def check() -> bool:
        nonlocal latest
        latest = alerts_of(channel, app)
        return done(latest)

    try:
        wait_for(check, 30, f"alerts of {app}")
    except TimeoutError:
        pytest.fail(
            f"alerts of {app} never matched; last seen: { {t: a.occurrences for t, a in latest.items()} }"
        )
    return latest


def test_a_workload_raises_exactly_the_alerts_its_behaviour_deserves(
    cluster: LocalCluster, channel: grpc.Channel, e2e_policy: str
) -> None:
    """Three behaviours from three categories become three alerts, counted across repeats and runs."""
    listen_port = free_tcp_port()
    # The workload listens on all interfaces, then connects to its own listener through the
    # blocklisted loopback address (the listener covers 127.0.0.77), then launches a shell.
    args = behave(
        "--listen-all", str(listen_port), "--connect", f"127.0.0.77:{listen_port}", "--times", "3", "--shell"
    )
    run = cluster.run_workload("e2e-shop", args, "--component", "api", "--policy", e2e_policy)
    assert run.returncode == 0, run.stderr
    assert "behave: done" in run.stdout

    expected = {"process.shell_launched", "network.listen_all_interfaces", "network.blocklisted_destination"}
    alerts = poll_alerts(
        channel,
        "e2e-shop",
        lambda a: set(a) == expected and a["network.blocklisted_destination"].occurrences == 3,
    )
    blocked = alerts["network.blocklisted_destination"]
    assert blocked.subject == "127.0.0.77"
    assert blocked.priority == 1  # P1: the catalog default for this type
    assert blocked.component == "api"
    assert blocked.policy == "E2E"
    assert blocked.state == alert_pb2.ALERT_STATE_OPEN
    assert alerts["network.listen_all_interfaces"].subject == f"tcp/{listen_port}"
    assert alerts["network.listen_all_interfaces"].occurrences == 1
    shell = alerts["process.shell_launched"]
    assert shell.subject == "/bin/sh"
    assert shell.occurrences == 1
    assert shell.sample.exec.path == "/bin/sh"
    assert list(shell.nodes) == list(blocked.nodes)
    assert len(shell.nodes) == 1

    # The same behaviour again: the same three alerts, their counts grow; nothing new appears.
    run = cluster.run_workload("e2e-shop", args, "--component", "api", "--policy", e2e_policy)
    assert run.returncode == 0, run.stderr
    alerts = poll_alerts(
        channel,
        "e2e-shop",
        lambda a: (
            a["network.blocklisted_destination"].occurrences == 6
            and a["process.shell_launched"].occurrences == 2
        ),
    )
    assert set(alerts) == expected
    assert alerts["network.listen_all_interfaces"].occurrences == 2
    assert (
        alerts["network.blocklisted_destination"].first_seen.ToNanoseconds()
        < alerts["network.blocklisted_destination"].last_seen.ToNanoseconds()
    )


def test_the_default_policy_ignores_what_it_does_not_cover(
    cluster: LocalCluster, channel: grpc.Channel
) -> None:
    """Without --policy the application gets Standard, whose blocklist is empty."""
    port = free_tcp_port()
    run = cluster.run_workload(
        "e2e-default", behave("--listen-all", str(port), "--connect", f"127.0.0.77:{port}", "--shell")
    )
    assert run.returncode == 0, run.stderr
    alerts = poll_alerts(
        channel,
        "e2e-default",
        lambda a: {"process.shell_launched", "network.listen_all_interfaces"} <= set(a),
    )
    assert "network.blocklisted_destination" not in alerts
    assert alerts["process.shell_launched"].policy == "Standard"


Change = tuple[int, alert_pb2.AlertChange]  # (revision, change)


def next_change(changes: queue.Queue[Change], alert_type: str) -> Change:
    """The next change of `alert_type` (others, such as node.workload_as_root for root, are skipped)."""
    deadline = time.monotonic() + 30
    while True:
        revision, change = changes.get(timeout=max(deadline - time.monotonic(), 0.01))
        if change.alert.alert_type == alert_type:
            return revision, change


def first_response(after_revision: int, channel: grpc.Channel) -> alert_pb2.WatchAlertsResponse:
    """The first message of a watch of e2e-watch's alerts resumed after `after_revision`."""
    resumed = alert_pb2_grpc.AlertServiceStub(channel).WatchAlerts(
        alert_pb2.WatchAlertsRequest(
            filter=alert_pb2.AlertFilter(applications=["e2e-watch"]), after_revision=after_revision
        ),
        timeout=60,
    )
    try:
        return next(iter(resumed))
    finally:
        resumed.cancel()


def test_a_console_watching_sees_the_alert_as_it_is_raised(
    cluster: LocalCluster, channel: grpc.Channel
) -> None:
    """WatchAlerts delivers CREATED for a new finding, UPDATED for its repeat, and resumes by position."""
    changes: queue.Queue[Change] = queue.Queue()
    stream = alert_pb2_grpc.AlertServiceStub(channel).WatchAlerts(
        alert_pb2.WatchAlertsRequest(filter=alert_pb2.AlertFilter(applications=["e2e-watch"])),
        timeout=120,
    )

    def consume() -> None:
        try:
            for response in stream:
                for change in response.changes:
                    changes.put((response.revision, change))
        except grpc.RpcError:
            pass

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    try:
        # The watch is registered once the server has answered the call's initial metadata.
        stream.initial_metadata()
        run = cluster.run_workload("e2e-watch", behave("--shell"))
        assert run.returncode == 0, run.stderr
        first_rev, first = next_change(changes, "process.shell_launched")
        assert first.kind == alert_pb2.ALERT_CHANGE_KIND_CREATED
        assert first.alert.application == "e2e-watch"
        assert first.alert.occurrences == 1
        assert first_rev > 0
        run = cluster.run_workload("e2e-watch", behave("--shell"))
        assert run.returncode == 0, run.stderr
        again_rev, again = next_change(changes, "process.shell_launched")
        assert again.kind == alert_pb2.ALERT_CHANGE_KIND_UPDATED
        assert again.alert.fingerprint == first.alert.fingerprint
        assert again.alert.occurrences == 2
        assert again_rev > first_rev
        # A position replays exactly what came after it: the whole revision after first_rev - 1,
        # and nothing of first_rev after first_rev.
        replay = first_response(first_rev - 1, channel)
        assert replay.revision == first_rev
        assert first.alert.fingerprint in {c.alert.fingerprint for c in replay.changes}
        later = first_response(first_rev, channel)
        assert later.revision > first_rev
        assert later.revision <= again_rev
    finally:
        stream.cancel()
        reader.join(timeout=10)


def test_a_workload_with_no_agent_runs_normally(
    cluster: LocalCluster, tmp_path: pytest.TempPathFactory
) -> None:
    """With nobody listening on the socket, the workload still runs, does its work and exits as usual."""
    cmd = cluster.telltale_cmd(
        "run",
        "--app",
        "lonely",
        "--socket",
        f"{tmp_path}/nobody.sock",
        "--",
        *behave("--shell", "--exit", "3"),
    )
    import subprocess

    started = time.monotonic()
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 3
    assert "behave: done" in run.stdout
    assert "no agent listening" in run.stderr
    assert time.monotonic() - started < 30


def test_the_node_is_in_the_inventory_and_in_sync(cluster: LocalCluster, channel: grpc.Channel) -> None:
    """The agent registered, acknowledged the policy revision and reports no sequence gaps."""
    stub = inventory_pb2_grpc.InventoryServiceStub(channel)

    def in_sync() -> bool:
        nodes = stub.ListNodes(inventory_pb2.ListNodesRequest(), timeout=10).nodes
        return len(nodes) == 1 and nodes[0].in_sync and nodes[0].last_seq > 0

    cluster.run_workload("e2e-inventory", behave())
    wait_for(in_sync, 30, "the node to be in sync")
    node = stub.ListNodes(inventory_pb2.ListNodesRequest(), timeout=10).nodes[0]
    assert node.liveness == inventory_pb2.NODE_LIVENESS_ONLINE
    assert node.sequence_gaps == 0
    assert node.hostname


def test_garbage_on_the_agent_socket_is_dropped_counted_and_reported(
    cluster: LocalCluster, channel: grpc.Channel
) -> None:
    """A local process writing junk cannot hurt the agent; the loss shows on the node's counters."""
    stub = inventory_pb2_grpc.InventoryServiceStub(channel)
    before = stub.ListNodes(inventory_pb2.ListNodesRequest(), timeout=10).nodes[0].malformed_records
    junk = [
        b"\x00" * 60,  # bad magic
        b"TT",  # shorter than a header
        b"TT\x09\x03" + b"\x00" * 36,  # unknown version
        b"TT\x01\x03\xff\x00" + b"\x00" * 34,  # length says 255, message has 40
        b"TT\x01\x03\x30\x00" + b"\x00" * 34 + b"\x05\x00\xff\x00" + b"\x00" * 4,  # field overruns
    ]
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        sock.connect(str(cluster.socket_path))
        for message in junk * 10:
            sock.send(message)

    def counted() -> bool:
        node = stub.ListNodes(inventory_pb2.ListNodesRequest(), timeout=10).nodes[0]
        return node.malformed_records >= before + len(junk) * 10

    wait_for(counted, 30, "the malformed records to be counted on the node")
    node = stub.ListNodes(inventory_pb2.ListNodesRequest(), timeout=10).nodes[0]
    assert node.malformed_records == before + len(junk) * 10
    # The agent still serves workloads.
    assert cluster.run_workload("e2e-after-junk", behave("--shell")).returncode == 0
    poll_alerts(channel, "e2e-after-junk", lambda a: "process.shell_launched" in a)
