"""Fault: one etcd member of three killed (issue 8) — the one leading etcd, the worst case.

A writer keeps making API writes (policy assignments) through a controller; the etcd leader is
killed. Writes in flight may fail or take etcd's request timeout while the others elect a leader;
afterwards every write succeeds, every acknowledged write is there (read through the other
controller), and a node's workload events recorded around the kill are all there, once. The time
from the kill to the first write that succeeds again is printed.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import grpc
import pytest
from helpers import behave
from netclusterkit import figure, net_cluster, node, occurrences

from telltale.cli.client import every_page
from telltale.netcluster import ETCD, NetCluster, wait_until
from telltale.v1 import policy_pb2, policy_pb2_grpc

pytestmark = pytest.mark.e2e

SHELL = "process.shell_launched"


def etcd_leader(cluster: NetCluster) -> str:
    """The name of the member leading the etcd cluster."""
    from telltale.controller.etcd import find_etcd_binary

    ctl = str(Path(find_etcd_binary()).with_name("etcdctl"))
    live = [f"http://{address}:2379" for name, address in ETCD.items() if cluster.running(name)]
    done = cluster.inside("hub", ctl, "--endpoints", ",".join(live), "endpoint", "status", "-w", "json")
    assert done.returncode == 0, done.stderr
    for entry in json.loads(done.stdout):
        status = entry["Status"]
        if status["header"]["member_id"] == status["leader"]:
            address = entry["Endpoint"].split("//")[-1].split(":")[0]
            return next(name for name, a in ETCD.items() if a == address)
    raise AssertionError(f"no etcd leader in {done.stdout}")


class Writer:
    """Assigns the Standard policy to application w-0, w-1, … through one controller, until stopped;
    keeps which writes were acknowledged and when writes failed."""

    def __init__(self, cluster: NetCluster, controller: str) -> None:
        self.channel = cluster.channel(controller)
        self.stub = policy_pb2_grpc.PolicyServiceStub(self.channel)
        self.acknowledged: list[tuple[float, str]] = []
        self.failed: list[tuple[float, str]] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop)

    def _loop(self) -> None:
        i = 0
        while not self.stopping.is_set():
            app = f"w-{i}"
            i += 1
            assignment = policy_pb2.PolicyAssignment(application=app, policy="Standard")
            try:
                self.stub.AssignPolicy(policy_pb2.AssignPolicyRequest(assignment=assignment), timeout=15)
            except grpc.RpcError as exc:
                self.failed.append((time.monotonic(), f"{exc.code().name}: {exc.details()}"))
                continue
            self.acknowledged.append((time.monotonic(), app))
            time.sleep(0.02)  # pace: about 50 writes a second at most, not a measurement

    def streak(self) -> int:
        """Writes acknowledged since the last failure."""
        last = self.failed[-1][0] if self.failed else 0.0
        return sum(1 for at, _ in self.acknowledged if at > last)

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join()
        self.channel.close()


def test_killing_the_etcd_leader_loses_no_acknowledged_write(tmp_path: Path) -> None:
    """SIGKILL of the etcd leader: writes succeed again after the election, and every write and
    every event acknowledged before, during and after is there."""
    with net_cluster(tmp_path, 1) as cluster:
        [name] = cluster.nodes
        runs = 0
        with Writer(cluster, "ctl-a") as writer:
            wait_until(lambda: len(writer.acknowledged) >= 20, 60, "writes before the kill")
            assert cluster.run_workload(name, "etcd-fault", behave("--shell")).returncode == 0
            runs += 1
            doomed = etcd_leader(cluster)
            killed_at = time.monotonic()
            cluster.kill(doomed)
            assert cluster.run_workload(name, "etcd-fault", behave("--shell")).returncode == 0
            runs += 1
            wait_until(
                lambda: any(at > killed_at for at, _ in writer.acknowledged),
                60,
                "a write to succeed after the kill",
            )
            back = min(at for at, _ in writer.acknowledged if at > killed_at) - killed_at
            wait_until(lambda: writer.streak() >= 50, 60, "50 writes in a row after the election")
            failed_after = [f for f in writer.failed if f[0] > killed_at + back]
            settled = max([at for at, _ in writer.failed if at > killed_at], default=killed_at) - killed_at
            assert cluster.run_workload(name, "etcd-fault", behave("--shell")).returncode == 0
            runs += 1
        new_leader = etcd_leader(cluster)
        assert new_leader != doomed

        with cluster.channel("ctl-b") as channel:
            pages = every_page(
                policy_pb2_grpc.PolicyServiceStub(channel).ListAssignments,
                policy_pb2.ListAssignmentsRequest(),
                timeout=10,
            )
        stored = {a.application for page in pages for a in page.assignments}
        missing = [app for _, app in writer.acknowledged if app not in stored]
        assert missing == [], "every acknowledged write survived"
        wait_until(lambda: occurrences(cluster, SHELL, "ctl-b").get("etcd-fault") == runs, 60, "the events")
        record = node(cluster, name, "ctl-b")
        assert (record.sequence_gaps, record.dropped_records) == (0, 0)

        cluster.start(doomed)  # rejoins with its data directory; the cluster is whole again
        figure(
            f"etcd leader {doomed} killed (3 members): writes succeeded again {back:.2f} s after the kill "
            f"(new leader {new_leader}); {len(writer.failed)} write(s) failed with UNAVAILABLE, "
            f"{len(failed_after)} of them after that first success, the last {settled:.2f} s after the kill"
            f"{''.join(f' ({why})' for _, why in failed_after[:1])}; then 50 in a row succeeded; "
            f"{len(writer.acknowledged)} "
            f"acknowledged, 0 lost; {runs} workloads' events recorded once"
        )
