"""The multi-node harness: three nodes in namespaces of their own, a 3-member etcd cluster and two
TLS controllers in a hub namespace. Every agent comes online, a workload on each node raises an
alert seen through either controller, and tearing down leaves nothing behind."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from helpers import behave
from netclusterkit import figure, names, net_cluster, occurrences, require_harness

from telltale.netcluster import CONTROLLERS, NetCluster, wait_until
from telltale.netcluster.state import State, alive
from telltale.v1.common_pb2 import ENFORCEMENT_MODE_ACTIVE

pytestmark = pytest.mark.e2e

SHELL = "process.shell_launched"


def test_three_nodes_come_online_raise_alerts_through_either_controller_and_leave_nothing(
    tmp_path: Path,
) -> None:
    """up with 3 nodes: all online with their own address; one workload per node raises an alert
    that both controllers show; down removes processes, namespaces and the work directory."""
    started = time.monotonic()
    with net_cluster(tmp_path, 3) as cluster:
        took = time.monotonic() - started
        prefix, workdir = cluster.prefix, cluster.workdir
        pids = [p.pid for p in cluster.state.processes.values()]
        listed = {n.node_id: n for n in cluster.list_nodes()}
        assert set(listed) == set(cluster.nodes)
        for name in cluster.nodes:
            assert listed[name].enforcement.mode == ENFORCEMENT_MODE_ACTIVE, "enforcing in its namespace"
            shown = cluster.inside(name, "ip", "-4", "-o", "addr", "show", "eth0").stdout
            assert f"{cluster.address(name)}/24" in shown, "each node has its own address"
        assert len(set(names(prefix))) == 4

        for name in cluster.nodes:
            done = cluster.run_workload(name, f"app-{name}", behave("--shell"))
            assert done.returncode == 0, done.stderr
        want = {f"app-{name}": 1 for name in cluster.nodes}
        for controller in CONTROLLERS:
            wait_until(
                lambda c=controller: occurrences(cluster, SHELL, c) == want, 60, f"alerts via {controller}"
            )
        figure(f"netcluster up with 3 nodes (2 controllers, 3 etcd members, TLS) in {took:.1f} s")
        check_cli(cluster)

    assert names(prefix) == [], "every namespace is gone"
    assert not any(alive(pid) for pid in pids), "every process is gone"
    assert not workdir.exists()
    assert not (tmp_path / "state.json").exists()


def check_cli(cluster: NetCluster) -> None:
    """The CLI, run inside the hub with the environment `up` prints, lists the nodes."""
    done = cluster.cli("nodes", "list", controller="ctl-b")
    assert done.returncode == 0, done.stderr
    assert all(name in done.stdout for name in cluster.nodes), done.stdout


def harness(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """`python -m telltale.netcluster ARGS`, output captured."""
    command = [sys.executable, "-m", "telltale.netcluster", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def test_the_command_refuses_a_second_up_shows_status_and_down_removes_everything(tmp_path: Path) -> None:
    """`up` (a process that exits, leaving the daemons running), `up` again refused naming `down`,
    `status` showing the node online, then `down` from yet another process removes everything."""
    require_harness()
    prefix = f"tc{uuid.uuid4().hex[:6]}"
    common = ["--prefix", prefix, "--state", str(tmp_path / "state.json")]
    up = harness("up", *common, "--nodes", "1", "--workdir", str(tmp_path / "w"))
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "TELLTALE_CONTROLLER=" in up.stdout
        again = harness("up", *common, "--nodes", "1")
        assert again.returncode == 2
        assert "down" in again.stderr
        status = harness("status", *common)
        assert status.returncode == 0, status.stdout + status.stderr
        assert "node node1" in status.stdout
        assert "online" in status.stdout
        pids = [p.pid for p in State.load(tmp_path / "state.json").processes.values()]
    finally:
        down = harness("down", *common)
    assert down.returncode == 0, down.stderr
    assert names(prefix) == []
    assert not any(alive(pid) for pid in pids)
    assert not (tmp_path / "w").exists()


def test_down_after_up_was_killed_half_way_removes_what_the_state_file_names(tmp_path: Path) -> None:
    """SIGKILL of `up` once etcd is starting: its daemons and namespaces stay behind, and `down`
    finds and removes them all through the state file."""
    require_harness()
    prefix = f"tk{uuid.uuid4().hex[:6]}"
    state_file = tmp_path / "state.json"
    common = ["--prefix", prefix, "--state", str(state_file)]
    command = [sys.executable, "-m", "telltale.netcluster", "up", *common, "--nodes", "2"]
    up = subprocess.Popen([*command, "--workdir", str(tmp_path / "w")], stdout=subprocess.DEVNULL)
    pids: list[int] = []
    try:

        def etcd_recorded() -> bool:
            try:
                return "etcd3" in State.load(state_file).processes
            except (OSError, ValueError):
                return False

        wait_until(etcd_recorded, 60, "up to start etcd")
        up.kill()
        up.wait()
        state = State.load(state_file)
        pids = [p.pid for p in state.processes.values()]
        assert any(alive(pid) for pid in pids), "the orphaned daemons still run"
        assert set(names(prefix)) == set(state.namespaces)
    finally:
        up.kill()
        up.wait()
        down = harness("down", *common)
    assert down.returncode == 0, down.stderr
    assert names(prefix) == []
    assert not any(alive(pid) for pid in pids)
    assert not (tmp_path / "w").exists()
    assert not state_file.exists()
