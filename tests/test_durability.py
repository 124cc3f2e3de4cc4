"""Durability of the agent's stream: every event reaches the controller exactly once across a
controller killed mid-stream and an agent killed with a full spool, and an outage longer than the
spool holds loses the oldest data, counted and shown.

Exactly once is observed through alerts: every workload listens on its own port on all interfaces
(one distinct alert each, which must be seen once) and launches one shell (the shell alerts'
occurrence counts must add up to the number of workloads). Each test has a cluster of its own, so
every alert counts, whatever application it is attributed to. After the agent is stopped, its spool
must be empty: nothing is left that the controller has not acknowledged.
"""

from __future__ import annotations

import random
import socket
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
import pytest
from helpers import behave, create_policy

from telltale.cli.client import every_page
from telltale.devcluster import LocalCluster, wait_for
from telltale.nodeagent.spool import read_spool
from telltale.v1 import agent_pb2, alert_pb2, alert_pb2_grpc, common_pb2, inventory_pb2, inventory_pb2_grpc

pytestmark = pytest.mark.e2e

POLICY = """
apiVersion: telltale.dev/v1
kind: AlertPolicy
metadata:
  name: Durability
  description: one alert per listening port, one per shell
spec:
  rules:
    process.shell_launched:
      enabled: true
    network.listen_all_interfaces:
      enabled: true
"""
SHELL = "process.shell_launched"
LISTEN = "network.listen_all_interfaces"
TIMEOUT_S = 90.0


def spooled(cluster: LocalCluster) -> list[agent_pb2.EventBatch]:
    """The batches in the agent's spool, read without disturbing the agent."""
    return read_spool(cluster.workdir / "agent" / "spool")


def free_ports(n: int) -> list[int]:
    """`n` distinct ports free now, below the kernel's ephemeral range: the etcd and controller
    a test restarts pick their ports from that range, so they never take one of these."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports: set[int] = set()
    while len(ports) < n:
        port = random.randrange(max(1024, low - 12_000), low)
        with socket.socket() as probe:
            try:
                probe.bind(("0.0.0.0", port))
            except OSError:
                continue
        ports.add(port)
    return sorted(ports)


def run(cluster: LocalCluster, port: int, app: str = "durable") -> int:
    """One workload: listens on `port` on all interfaces, then launches a shell."""
    done = cluster.run_workload(app, behave("--listen-all", str(port), "--shell"), "--policy", "Durability")
    return done.returncode


def alerts(channel: grpc.Channel) -> list[alert_pb2.Alert]:
    """Every alert of the cluster."""
    stub = alert_pb2_grpc.AlertServiceStub(channel)
    pages = every_page(stub.ListAlerts, alert_pb2.ListAlertsRequest(), timeout=10)
    return [alert for page in pages for alert in page.alerts]


def tally(channel: grpc.Channel) -> tuple[int, dict[str, int]]:
    """(shell occurrences, occurrences per listening subject) over the whole cluster."""
    shells = 0
    listens: dict[str, int] = {}
    for alert in alerts(channel):
        if alert.alert_type == SHELL:
            assert alert.application == "durable", "every shell is attributed to its workload"
            shells += alert.occurrences
        elif alert.alert_type == LISTEN:
            listens[alert.subject] = listens.get(alert.subject, 0) + alert.occurrences
    return shells, listens


def expected(ports: Sequence[int]) -> tuple[int, dict[str, int]]:
    return len(ports), {f"tcp/{port}": 1 for port in ports}


def node(channel: grpc.Channel) -> inventory_pb2.Node:
    [only] = (
        inventory_pb2_grpc.InventoryServiceStub(channel)
        .ListNodes(inventory_pb2.ListNodesRequest(), timeout=10)
        .nodes
    )
    return only


def shells_spooled(batches: Sequence[agent_pb2.EventBatch]) -> int:
    """Shell launches among spooled events."""
    return sum(1 for b in batches for e in b.events if e.exec.path == "/bin/sh")


def listens_spooled(batches: Sequence[agent_pb2.EventBatch]) -> set[int]:
    """Ports of the listening sockets among spooled events."""
    return {
        e.socket.address.port for b in batches for e in b.events if e.kind == common_pb2.EVENT_KIND_LISTEN
    }


def outage(
    cluster: LocalCluster,
    channel: grpc.Channel,
    ports: Sequence[int],
    in_spool: Callable[[list[agent_pb2.EventBatch]], bool],
    what: str,
) -> None:
    """Create the policy and wait for the first workload's alerts; then stop the controller, run the
    other workloads, and wait until `in_spool` holds for the agent's spool (`what` names that)."""
    create_policy(channel, POLICY)
    assert run(cluster, ports[0]) == 0
    wait_for(lambda: tally(channel) == expected(ports[:1]), TIMEOUT_S, "the first workload's alerts")
    cluster.stop("controller")
    for port in ports[1:]:
        assert run(cluster, port) == 0
    wait_for(lambda: in_spool(spooled(cluster)), TIMEOUT_S, what)


def settle(cluster: LocalCluster, channel: grpc.Channel, want: tuple[int, dict[str, int]]) -> None:
    """Wait for `want`, stop the agent (it waits for its acknowledgements), and check that nothing
    is left in its spool and that no event arrived twice."""
    seen: list[tuple[int, dict[str, int]]] = []

    def arrived() -> bool:
        seen[:] = [tally(channel)]
        return seen[0] == want

    try:
        wait_for(arrived, TIMEOUT_S, "the alerts")
    except TimeoutError:
        pytest.fail(
            f"alerts never matched: want {want}, last seen {seen}; node {node(channel)}; "
            f"agent log:\n{cluster.log_tail('agent', 40)}"
        )
    cluster.stop("agent")
    assert spooled(cluster) == [], "every batch was acknowledged"
    assert tally(channel) == want


def test_a_controller_killed_mid_stream_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """kill -9 of the controller while workloads stream: after its restart every event is there once."""
    ports = free_ports(24)
    with LocalCluster(tmp_path) as cluster, grpc.insecure_channel(cluster.api) as channel:
        create_policy(channel, POLICY)
        codes: list[int] = []

        def stream() -> None:
            for port in ports:
                codes.append(run(cluster, port))

        streamer = threading.Thread(target=stream)
        streamer.start()
        try:
            wait_for(lambda: len(tally(channel)[1]) >= 4, TIMEOUT_S, "the first alerts")
            cluster.kill("controller")
            killed_after = len(codes)
            wait_for(lambda: len(codes) >= killed_after + 6, TIMEOUT_S, "workloads during the outage")
            cluster.start_controller()
        finally:
            streamer.join()
        assert codes == [0] * len(ports)
        assert killed_after < len(ports), "the controller died while workloads were still running"
        settle(cluster, channel, expected(ports))
        assert (node(channel).sequence_gaps, node(channel).dropped_records) == (0, 0)


def test_an_agent_killed_with_unacknowledged_batches_delivers_them_once_after_restart(tmp_path: Path) -> None:
    """Controller down, events spooled, agent kill -9; restart agent, then controller: all arrive once."""
    ports = free_ports(6)
    with LocalCluster(tmp_path) as cluster, grpc.insecure_channel(cluster.api) as channel:
        outage(
            cluster,
            channel,
            ports,
            lambda batches: shells_spooled(batches) == len(ports) - 1,
            "the outage's events to be spooled",
        )
        cluster.kill("agent")

        cluster.start_agent()
        cluster.start_controller()
        settle(cluster, channel, expected(ports))
        assert (node(channel).sequence_gaps, node(channel).dropped_records) == (0, 0)


def test_an_outage_longer_than_the_spool_holds_drops_the_oldest_and_counts_it(tmp_path: Path) -> None:
    """With room for 4 batches, a long outage drops the oldest batches; the node shows the loss."""
    ports = free_ports(13)
    with (
        LocalCluster(tmp_path, agent_args=["--spool-batches", "4"]) as cluster,
        grpc.insecure_channel(cluster.api) as channel,
    ):
        outage(
            cluster,
            channel,
            ports,
            lambda batches: ports[-1] in listens_spooled(batches),
            "the last workload's events to be spooled",
        )
        assert len(spooled(cluster)) == 4

        cluster.start_controller()
        wait_for(lambda: f"tcp/{ports[-1]}" in tally(channel)[1], TIMEOUT_S, "the newest events")
        wait_for(lambda: node(channel).dropped_batches > 0, TIMEOUT_S, "a heartbeat reporting the loss")
        shells, listens = tally(channel)
        assert shells < len(ports), "some events were lost"
        assert all(n == 1 for n in listens.values()), "what arrived, arrived once"
        lost = node(channel)
        assert lost.dropped_records >= len(ports) - shells, "every lost shell launch is counted"
        assert lost.sequence_gaps == lost.dropped_batches, "the controller sees the gap the agent counted"
