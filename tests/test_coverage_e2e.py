"""Coverage gaps end to end: a workload runs a static binary; the gap reaches the controller and
shows in `telltale nodes show` and `telltale workloads list|show`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import grpc
import pytest

from telltale.devcluster import LocalCluster, wait_for
from telltale.v1 import common_pb2, inventory_pb2, inventory_pb2_grpc

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build a static program"),
]

HELLO = Path(__file__).parent / "shim" / "coverage" / "hello.c"


def workloads_of(channel: grpc.Channel, app: str) -> list[common_pb2.Workload]:
    stub = inventory_pb2_grpc.InventoryServiceStub(channel)
    return list(stub.ListWorkloads(inventory_pb2.ListWorkloadsRequest(application=app), timeout=10).workloads)


def test_a_static_binary_run_by_a_workload_is_a_visible_coverage_gap(
    cluster: LocalCluster, channel: grpc.Channel, tmp_path: Path
) -> None:
    """The gap is listed on the node and on the workload, through the API and the CLI."""
    static = tmp_path / "static-hello"
    subprocess.run(["gcc", "-static", "-O1", "-o", str(static), str(HELLO)], check=True, capture_output=True)
    run = cluster.run_workload("e2e-coverage", ["sh", "-c", f"{static} there; true"], "--component", "api")
    assert run.returncode == 0, run.stderr
    assert run.stdout == "hello there\n"

    expected = f"static binary {static}"
    latest: list[common_pb2.Workload] = []

    def recorded() -> bool:
        nonlocal latest
        latest = workloads_of(channel, "e2e-coverage")
        return any(expected in w.coverage_gaps for w in latest)

    wait_for(recorded, 30, "the workload's coverage gap")
    [workload] = latest
    assert list(workload.coverage_gaps) == [expected]

    node = (
        inventory_pb2_grpc.InventoryServiceStub(channel)
        .GetNode(inventory_pb2.GetNodeRequest(node_id=workload.node_id), timeout=10)
        .node
    )
    assert f"{expected} (workload e2e-coverage/api)" in node.coverage_gaps

    shown = cluster.cli("nodes", "show", workload.node_id)
    assert shown.returncode == 0, shown.stderr
    assert f"coverage gap  {expected} (workload e2e-coverage/api)" in shown.stdout

    listed = cluster.cli("workloads", "list", "--app", "e2e-coverage")
    assert listed.returncode == 0, listed.stderr
    [row] = [line for line in listed.stdout.splitlines() if line.startswith(workload.id)]
    assert "e2e-coverage/api" in row
    assert row.rstrip().endswith(" 1")

    shown = cluster.cli("workloads", "show", workload.id)
    assert shown.returncode == 0, shown.stderr
    assert f"coverage gap  {expected}" in shown.stdout
    assert f"node          {workload.node_id}" in shown.stdout

    missing = cluster.cli("workloads", "show", "no-such-workload")
    assert missing.returncode == 1
    assert "no workload 'no-such-workload'" in missing.stderr
