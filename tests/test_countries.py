"""Restricted countries, end to end: a country override file maps a loopback address to a country."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from helpers import behave

from telltale.devcluster import LocalCluster, wait_for
from telltale.netutil import free_tcp_port
from telltale.v1 import alert_pb2, alert_pb2_grpc, policy_pb2, policy_pb2_grpc

pytestmark = pytest.mark.e2e

POLICY = """
apiVersion: telltale.dev/v1
kind: AlertPolicy
metadata:
  name: No KP
spec:
  rules:
    network.restricted_country:
      params:
        countries: [KP]
"""


def test_a_connection_to_a_restricted_country_raises_an_alert(tmp_path: Path) -> None:
    """127.0.0.88 is 'KP' by the override file: connecting there alerts; 127.0.0.89 ('DE') does not."""
    overrides = tmp_path / "countries.yaml"
    overrides.write_text("127.0.0.88/32: KP\n127.0.0.89/32: DE\n")
    with (
        LocalCluster(
            tmp_path / "cluster", controller_args=["--country-overrides", str(overrides)]
        ) as cluster,
        grpc.insecure_channel(cluster.api) as channel,
    ):
        policy_pb2_grpc.PolicyServiceStub(channel).CreatePolicy(
            policy_pb2.CreatePolicyRequest(document=POLICY)
        )
        port = free_tcp_port()
        run = cluster.run_workload(
            "geo",
            behave(
                "--listen-all",
                str(port),
                "--connect",
                f"127.0.0.89:{port}",
                "--connect-also",
                f"127.0.0.88:{port}",
            ),
            "--policy",
            "No KP",
        )
        assert run.returncode == 0, run.stderr

        def alerts() -> list[alert_pb2.Alert]:
            return list(
                alert_pb2_grpc.AlertServiceStub(channel)
                .ListAlerts(alert_pb2.ListAlertsRequest(filter=alert_pb2.AlertFilter(applications=["geo"])))
                .alerts
            )

        wait_for(lambda: any(a.alert_type == "network.restricted_country" for a in alerts()), 30, "the alert")
        restricted = [a for a in alerts() if a.alert_type == "network.restricted_country"]
        assert [a.subject for a in restricted] == ["KP"]  # one alert per country, whatever the address
        assert restricted[0].sample.socket.address.address == "127.0.0.88"


def test_a_bad_override_file_stops_the_controller_with_a_clear_error(tmp_path: Path) -> None:
    """A malformed override file is refused at start, naming the flag."""
    overrides = tmp_path / "countries.yaml"
    overrides.write_text("not-a-network: KP\n")
    cluster = LocalCluster(tmp_path / "cluster")
    out = cluster.cli(
        "controller",
        "--plaintext",
        "--listen",
        f"127.0.0.1:{free_tcp_port()}",
        "--data-dir",
        str(tmp_path / "data"),
        "--country-overrides",
        str(overrides),
    )
    assert out.returncode == 2
    assert "--country-overrides" in out.stderr
