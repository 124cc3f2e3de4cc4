"""Starting, stopping and restarting the daemons; the CLI's errors."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import aetcd
import grpc
import pytest
from helpers import behave

from telltale.controller.etcd import spawn_embedded_etcd, wait_ready
from telltale.devcluster import LocalCluster, wait_for
from telltale.netutil import free_tcp_port
from telltale.v1 import alert_pb2, alert_pb2_grpc, policy_pb2, policy_pb2_grpc

pytestmark = pytest.mark.e2e


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _alert_types(channel: grpc.Channel, app: str) -> set[str]:
    response = alert_pb2_grpc.AlertServiceStub(channel).ListAlerts(
        alert_pb2.ListAlertsRequest(filter=alert_pb2.AlertFilter(applications=[app])), timeout=10
    )
    return {a.alert_type for a in response.alerts}


def test_stopping_the_cluster_leaves_no_process_behind(tmp_path: Path) -> None:
    """Controller, agent and the embedded etcd are all gone after a stop, and the socket is removed."""
    with LocalCluster(tmp_path) as cluster:
        pids = [p.pid for p in cluster.processes.values()]
        etcd_pid = int((tmp_path / "controller" / "etcd.pid").read_text())
        assert all(_alive(pid) for pid in [*pids, etcd_pid])
    for pid in [*pids, etcd_pid]:
        wait_for(lambda pid=pid: not _alive(pid), 10, f"pid {pid} to exit")
    assert not cluster.socket_path.exists()


def test_alerts_survive_a_controller_restart_and_the_agent_reconnects(tmp_path: Path) -> None:
    """Alerts are in etcd, not in the controller; the agent reconnects by itself and keeps delivering."""
    with LocalCluster(tmp_path) as cluster, grpc.insecure_channel(cluster.api) as channel:
        assert cluster.run_workload("restart-a", behave("--shell")).returncode == 0
        wait_for(lambda: "process.shell_launched" in _alert_types(channel, "restart-a"), 30, "first alert")

        cluster.stop("controller")
        cluster.start_controller()
        assert "process.shell_launched" in _alert_types(channel, "restart-a")

        assert cluster.run_workload("restart-b", behave("--shell")).returncode == 0
        wait_for(
            lambda: "process.shell_launched" in _alert_types(channel, "restart-b"), 30, "alert after restart"
        )


def test_an_invalid_policy_is_rejected_whole_with_the_field_path(tmp_path: Path) -> None:
    """Every problem is named by its field path, and nothing is stored."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: telltale.dev/v1\nkind: AlertPolicy\nmetadata:\n  name: Broken\nspec:\n  rules:\n"
        "    network.blocklisted_destination:\n      params:\n        networks: ['10.0.0.0/33']\n"
        "    process.no_such_type: {}\n"
    )
    with LocalCluster(tmp_path / "cluster") as cluster:
        out = cluster.cli("policy", "apply", "-f", str(bad))
        assert out.returncode == 1
        assert "nothing was changed" in out.stderr
        assert "spec.rules.network.blocklisted_destination.params.networks[0]" in out.stderr
        assert "spec.rules.process.no_such_type" in out.stderr
        with grpc.insecure_channel(cluster.api) as channel:
            stub = policy_pb2_grpc.PolicyServiceStub(channel)
            names = {p.name for p in stub.ListPolicies(policy_pb2.ListPoliciesRequest()).policies}
            assert names == {"Standard", "Max Alert"}
            with pytest.raises(grpc.RpcError) as caught:
                stub.CreatePolicy(policy_pb2.CreatePolicyRequest(document=bad.read_text()))
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "networks[0]" in (caught.value.details() or "")
            with pytest.raises(grpc.RpcError) as caught:
                stub.UpdatePolicy(
                    policy_pb2.UpdatePolicyRequest(
                        document=stub.GetPolicy(policy_pb2.GetPolicyRequest(name="Standard")).document,
                        expected_revision=1,
                    )
                )
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "read-only" in (caught.value.details() or "")


def _telltale(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [sys.executable, "-m", "telltale.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )
    assert "Traceback" not in out.stderr
    return out


def test_the_cli_explains_what_is_wrong() -> None:
    """Bad invocations fail with one readable line and a distinct exit status, never a traceback."""
    dead = f"127.0.0.1:{free_tcp_port()}"
    out = _telltale("alerts", "list", "--plaintext", "--controller", dead, "--timeout", "2")
    assert out.returncode == 1
    assert f"the controller at {dead} is unavailable" in out.stderr
    out = _telltale("alerts", "list", "--controller", dead, "--timeout", "2", env={"TELLTALE_PLAINTEXT": ""})
    assert out.returncode == 1
    assert "with TLS: check --ca" in out.stderr
    out = _telltale("controller", "--listen", "0.0.0.0:7443", "--plaintext")
    assert out.returncode == 2
    assert "only allowed on a loopback address" in out.stderr
    out = _telltale("run", "--app", "shop")
    assert out.returncode == 2
    assert "no command given" in out.stderr
    out = _telltale("run", "--app", "bad name", "--", "true")
    assert out.returncode == 2
    assert "--app 'bad name'" in out.stderr
    out = _telltale("run", "--app", "shop", "--socket", "/nonexistent/a.sock", "--", "no-such-command-xyz")
    assert out.returncode == 127
    assert "command not found" in out.stderr


def test_a_controller_uses_a_configured_etcd_under_its_key_prefix(tmp_path: Path) -> None:
    """With --etcd-endpoints no etcd is embedded; everything lands under the configured prefix."""
    etcd = spawn_embedded_etcd(tmp_path / "etcd")
    try:
        wait_ready(etcd)
        with LocalCluster(
            tmp_path / "cluster", etcd_endpoint=etcd.endpoint, etcd_prefix="/acme/tt/"
        ) as cluster:
            assert not (tmp_path / "cluster" / "controller" / "etcd").exists()
            assert cluster.run_workload("external-etcd", behave("--shell")).returncode == 0
            with grpc.insecure_channel(cluster.api) as channel:
                wait_for(
                    lambda: "process.shell_launched" in _alert_types(channel, "external-etcd"),
                    30,
                    "the alert",
                )
        keys = asyncio.run(_keys(etcd.endpoint))
        assert any(k.startswith("/acme/tt/alerts/") for k in keys)
        assert "/acme/tt/policy/default" in keys
        assert all(k.startswith("/acme/tt/") for k in keys)
    finally:
        etcd.stop()


async def _keys(endpoint: str) -> list[str]:
    host, port = endpoint.split(":")
    async with aetcd.Client(host=host, port=int(port)) as client:
        return [kv.key.decode() for kv in await client.get_prefix(b"/")]


def test_alerts_are_triaged_from_the_cli_and_the_decision_is_recorded(tmp_path: Path) -> None:
    """ack, dismiss (with a reason), suppress for a while and reopen change the state and its history."""
    with LocalCluster(tmp_path) as cluster, grpc.insecure_channel(cluster.api) as channel:
        assert cluster.run_workload("triage", behave("--shell")).returncode == 0
        wait_for(lambda: "process.shell_launched" in _alert_types(channel, "triage"), 30, "the alert")
        stub = alert_pb2_grpc.AlertServiceStub(channel)
        listed = stub.ListAlerts(
            alert_pb2.ListAlertsRequest(
                filter=alert_pb2.AlertFilter(applications=["triage"], alert_types=["process.shell_launched"])
            )
        )
        fingerprint = listed.alerts[0].fingerprint

        out = cluster.cli("alerts", "ack", fingerprint)
        assert out.returncode == 0, out.stderr
        assert "acknowledged" in out.stdout
        refused = cluster.cli("alerts", "dismiss", fingerprint)
        assert refused.returncode == 2  # --reason is required
        out = cluster.cli("alerts", "suppress", fingerprint, "--for", "2h", "--reason", "maintenance window")
        assert out.returncode == 0, out.stderr
        assert "suppressed until" in out.stdout
        bad = cluster.cli("alerts", "suppress", fingerprint, "--for", "soon", "--reason", "x")
        assert bad.returncode == 2
        assert "--for 'soon'" in bad.stderr
        out = cluster.cli("alerts", "dismiss", fingerprint, "--reason", "expected in CI")
        assert out.returncode == 0, out.stderr

        alert = stub.GetAlert(alert_pb2.GetAlertRequest(fingerprint=fingerprint)).alert
        assert alert.state == alert_pb2.ALERT_STATE_NOT_AN_ISSUE
        assert [h.state for h in alert.history] == [
            alert_pb2.ALERT_STATE_ACKNOWLEDGED,
            alert_pb2.ALERT_STATE_SUPPRESSED,
            alert_pb2.ALERT_STATE_NOT_AN_ISSUE,
        ]
        assert alert.history[-1].reason == "expected in CI"
        assert alert.history[-1].actor
        listed_state = cluster.cli("alerts", "list", "--state", "not-an-issue", "--app", "triage")
        assert fingerprint in listed_state.stdout
