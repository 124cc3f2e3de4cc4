"""Replicas as real processes: a 3-member etcd cluster and two controllers on loopback ports.

A policy change made through one replica reaches an agent connected to the other; killing the
election holder moves the singleton duties; killing an etcd member loses nothing acknowledged.
The agents here are gRPC clients speaking AgentService.Connect directly.

The propagation figure (p99 over 20 changes, or $TELLTALE_PROPAGATION_CHANGES) is printed: run
``.venv/bin/pytest -q -s -k propagation tests/test_replicas_e2e.py``.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from etcdcluster import EtcdCluster

from telltale.devcluster import LocalCluster
from telltale.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    alert_pb2,
    alert_pb2_grpc,
    common_pb2,
    inventory_pb2,
    inventory_pb2_grpc,
    policy_pb2,
    policy_pb2_grpc,
)

pytestmark = pytest.mark.e2e

LEASE_TTL_S = 2
WAIT_S = 30.0
CHANGES = int(os.environ.get("TELLTALE_PROPAGATION_CHANGES", "20"))
T = TypeVar("T")


def poll(condition: Callable[[], T | None], what: str, within: float = WAIT_S) -> T:
    """Poll `condition` until it returns something other than None/False; fail after `within`."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {within:.0f}s waiting for {what}")


class Agent:
    """A node agent reduced to its stream: Hello, then batches; responses collected by a thread."""

    def __init__(self, address: str, node_id: str) -> None:
        self.node_id = node_id
        self.channel = grpc.insecure_channel(address)
        self.requests: queue.Queue[agent_pb2.ConnectRequest | None] = queue.Queue()
        self.responses: queue.Queue[tuple[float, agent_pb2.ConnectResponse | grpc.RpcError]] = queue.Queue()
        self.call = agent_pb2_grpc.AgentServiceStub(self.channel).Connect(iter(self.requests.get, None))
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        hello = agent_pb2.Hello(node_id=node_id, hostname=node_id, instance_id=uuid.uuid4().hex)
        self.requests.put(agent_pb2.ConnectRequest(hello=hello))
        self.welcome = self.next("welcome").welcome

    def _read(self) -> None:
        try:
            for response in self.call:
                self.responses.put((time.monotonic(), response))
        except grpc.RpcError as exc:
            self.responses.put((time.monotonic(), exc))

    def next_timed(self, kind: str, within: float = WAIT_S) -> tuple[float, agent_pb2.ConnectResponse]:
        """The next response of `kind` and when it arrived; raises the stream's error if it ends."""
        deadline = time.monotonic() + within
        while True:
            at, response = self.responses.get(timeout=max(deadline - time.monotonic(), 0.001))
            if isinstance(response, grpc.RpcError):
                raise response
            if response.WhichOneof("message") == kind:
                return at, response

    def next(self, kind: str, within: float = WAIT_S) -> agent_pb2.ConnectResponse:
        return self.next_timed(kind, within)[1]

    def send_batch(self, seq: int) -> None:
        workload = common_pb2.Workload(id="w-shop", application="shop")
        event = common_pb2.Event(
            kind=common_pb2.EVENT_KIND_EXEC,
            workload_id=workload.id,
            count=1,
            process=common_pb2.ProcessInfo(pid=10, exe="/usr/bin/python3"),
            exec=common_pb2.ExecDetail(path="/bin/sh"),
        )
        batch = agent_pb2.EventBatch(seq=seq, workloads=[workload], events=[event])
        self.requests.put(agent_pb2.ConnectRequest(batch=batch))

    def close(self) -> None:
        self.requests.put(None)
        self.call.cancel()
        self.reader.join(timeout=10)
        self.channel.close()


class Replicas:
    """Two controllers on one etcd cluster and one key prefix; always stopped."""

    def __init__(self, workdir: Path, etcd: EtcdCluster) -> None:
        self.etcd = etcd
        self.prefix = f"/replicas-{uuid.uuid4().hex[:8]}/"
        self.controllers = [
            LocalCluster(
                workdir / name,
                etcd_endpoint=",".join(etcd.endpoints),
                etcd_prefix=self.prefix,
                controller_args=["--lease-ttl", str(LEASE_TTL_S)],
            )
            for name in ("a", "b")
        ]
        self.agents: list[Agent] = []

    def __enter__(self) -> Replicas:
        try:
            for controller in self.controllers:
                controller.workdir.mkdir(parents=True, exist_ok=True)
                controller.start_controller()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        for agent in self.agents:
            agent.close()
        for controller in self.controllers:
            controller.stop()

    def agent(self, controller: LocalCluster, node_id: str) -> Agent:
        agent = Agent(controller.api, node_id)
        self.agents.append(agent)
        return agent

    def etcd_value(self, key: str) -> str:
        return self.etcd.etcdctl("get", self.prefix + key, "--print-value-only").strip()

    def leader(self) -> LocalCluster | None:
        """The controller holding the election, found through its registration's listen address."""
        leader_id = self.etcd_value("election/leader")
        if not leader_id:
            return None
        record = inventory_pb2.ControllerRecord()
        raw = self.etcd.etcdctl("get", f"{self.prefix}controllers/{leader_id}", "-w", "json")
        kvs = json.loads(raw).get("kvs", [])
        if not kvs:
            return None
        record.ParseFromString(base64.b64decode(kvs[0]["value"]))
        return next((c for c in self.controllers if c.api == record.listen), None)


def _policies(controller: LocalCluster) -> tuple[grpc.Channel, policy_pb2_grpc.PolicyServiceStub]:
    channel = grpc.insecure_channel(controller.api)
    return channel, policy_pb2_grpc.PolicyServiceStub(channel)


def _assign(stub: policy_pb2_grpc.PolicyServiceStub, application: str) -> None:
    stub.AssignPolicy(
        policy_pb2.AssignPolicyRequest(
            assignment=policy_pb2.PolicyAssignment(application=application, policy="Standard")
        ),
        timeout=10,
    )


def _liveness(controller: LocalCluster, node_id: str) -> int:
    with grpc.insecure_channel(controller.api) as channel:
        stub = inventory_pb2_grpc.InventoryServiceStub(channel)
        return int(stub.GetNode(inventory_pb2.GetNodeRequest(node_id=node_id), timeout=5).node.liveness)


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """Three etcd members on loopback, for the module; always stopped."""
    with EtcdCluster(tmp_path_factory.mktemp("etcd3")) as cluster:
        yield cluster


def test_policy_propagation_through_one_replica_reaches_an_agent_on_the_other(
    etcd: EtcdCluster, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """20 assignments made through controller A each reach an agent streaming from controller B;
    the p99 of call-to-arrival is printed (and recorded as a test property)."""
    with Replicas(tmp_path, etcd) as replicas:
        a, b = replicas.controllers
        agent = replicas.agent(b, "node-prop")
        agent.next("policy_update")
        channel, stub = _policies(a)
        latencies = []
        try:
            for i in range(CHANGES):
                application = f"prop-{i}"
                started = time.monotonic()
                _assign(stub, application)
                while True:
                    at, response = agent.next_timed("policy_update", within=10)
                    if any(x.application == application for x in response.policy_update.assignments):
                        latencies.append(at - started)
                        break
        finally:
            channel.close()
        latencies.sort()
        p50 = latencies[len(latencies) // 2]
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        print(f"\npolicy propagation A -> agent on B over {CHANGES} changes: p50 {p50 * 1000:.1f} ms, "
              f"p99 {p99 * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms")  # fmt: skip
        record_property("propagation_p99_ms", round(p99 * 1000, 1))


def test_killing_the_election_holder_moves_the_duties_and_expires_its_nodes(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    """SIGKILL of the leader: the other replica leads within about a lease TTL and marks the dead
    replica's node offline; its own node stays online."""
    with Replicas(tmp_path, etcd) as replicas:
        leader = poll(replicas.leader, "a leader")
        survivor = next(c for c in replicas.controllers if c is not leader)
        replicas.agent(leader, "node-doomed")
        replicas.agent(survivor, "node-kept")
        online = inventory_pb2.NODE_LIVENESS_ONLINE
        poll(lambda: _liveness(survivor, "node-doomed") == online, "node-doomed online")

        leader.kill("controller")
        killed_at = time.monotonic()
        poll(lambda: replicas.leader() is survivor, "the survivor to lead", within=LEASE_TTL_S * 5)
        took_over = time.monotonic() - killed_at
        poll(
            lambda: _liveness(survivor, "node-doomed") == inventory_pb2.NODE_LIVENESS_OFFLINE,
            "node-doomed offline",
            within=LEASE_TTL_S * 5,
        )
        offline = time.monotonic() - killed_at
        assert _liveness(survivor, "node-kept") == online
        print(f"\nleader killed: survivor led after {took_over:.2f}s, node offline after {offline:.2f}s")


def _leader_member(cluster: EtcdCluster) -> int:
    """The index of the etcd member that is the raft leader."""
    statuses = json.loads(cluster.etcdctl("endpoint", "status", "-w", "json"))
    for status in statuses:
        if status["Status"]["leader"] == status["Status"]["header"]["member_id"]:
            endpoint = status["Endpoint"]
            return next(i for i, e in enumerate(cluster.endpoints) if e == endpoint)
    raise AssertionError(f"no leader among {statuses}")


class SteadyLoad:
    """API writes through one replica and agent batches into the other, each retried until it is
    acknowledged, as a console and a real agent would."""

    def __init__(self, replicas: Replicas) -> None:
        self.replicas = replicas
        self.api, self.other = replicas.controllers
        self.channel, self.stub = _policies(self.api)
        self.agent = replicas.agent(self.other, "node-steady")
        self.assigned: list[str] = []
        self.acked: set[int] = set()
        self.seq = 0

    def write(self, i: int) -> None:
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                _assign(self.stub, f"steady-{i}")
                self.assigned.append(f"steady-{i}")
                return
            except grpc.RpcError as exc:
                # During etcd's election a write may fail or time out (its outcome unknown: not
                # acknowledged); assigning again is idempotent.
                retry = exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                if time.monotonic() > deadline or not retry:
                    raise

    def record_batch(self) -> None:
        self.seq += 1
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                self.agent.send_batch(self.seq)
                ack = self.agent.next("batch_ack", within=10)
                self.acked.add(ack.batch_ack.seq)
                return
            except (grpc.RpcError, queue.Empty):
                if time.monotonic() > deadline:
                    raise
                # As the real agent does: reconnect and resend what was not acknowledged.
                self.agent.close()
                self.replicas.agents.remove(self.agent)
                self.agent = self.replicas.agent(self.other, "node-steady")
                if self.agent.welcome.last_seq >= self.seq:
                    self.acked.add(self.seq)
                    return

    def step(self, i: int) -> None:
        self.write(i)
        self.record_batch()


def test_losing_one_etcd_member_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """The etcd leader of three is killed: API writes and agent batches keep succeeding after etcd's
    election, and every acknowledged one is there, seen through the other replica."""
    with EtcdCluster(tmp_path / "etcd") as cluster, Replicas(tmp_path, cluster) as replicas:
        load = SteadyLoad(replicas)
        try:
            for i in range(10):
                load.step(i)
            cluster.kill(_leader_member(cluster))
            killed_at = time.monotonic()
            load.step(10)
            recovered = time.monotonic() - killed_at
            for i in range(11, 30):
                load.step(i)
        finally:
            load.channel.close()
        print(f"\netcd leader killed: the next write and batch were acknowledged after {recovered:.2f}s")
        assert len(load.assigned) == 30
        assert load.acked == set(range(1, 31))

        with grpc.insecure_channel(load.other.api) as other:
            listing = policy_pb2_grpc.PolicyServiceStub(other).ListAssignments(
                policy_pb2.ListAssignmentsRequest(page=common_pb2.PageRequest(page_size=1000)), timeout=10
            )
        assert set(load.assigned) <= {x.application for x in listing.assignments}
        shell = poll(lambda: _shell_occurrences(load.other), "the shell alert")
        assert shell == 30, "each acknowledged batch counted exactly once"


def _shell_occurrences(controller: LocalCluster) -> int:
    with grpc.insecure_channel(controller.api) as channel:
        listing = alert_pb2_grpc.AlertServiceStub(channel).ListAlerts(
            alert_pb2.ListAlertsRequest(), timeout=10
        )
    return sum(int(a.occurrences) for a in listing.alerts if a.alert_type == "process.shell_launched")


def test_an_agent_reconnecting_at_once_to_the_same_replica_keeps_its_liveness_key(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    """An agent whose stream ends and that opens the next one at once on the same replica keeps its
    node's liveness key while the new stream is open (the old stream's cleanup never removes the
    new stream's key)."""
    with Replicas(tmp_path, etcd) as replicas:
        controller = replicas.controllers[0]
        for i in range(8):
            node_id = f"reconnect-{i}"
            first = replicas.agent(controller, node_id)
            time.sleep(0.05)
            first.call.cancel()
            second = replicas.agent(controller, node_id)
            time.sleep(0.5)  # the first stream's cleanup has run by now
            assert replicas.etcd_value(f"node-live/{node_id}"), f"{node_id}: liveness key gone"
            second.close()
