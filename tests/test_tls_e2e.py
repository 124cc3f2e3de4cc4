"""Mutual TLS end to end: a controller serving TLS and real agents with node certificates, as
processes on loopback ports."""

from __future__ import annotations

import queue
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from tlskit import Pki, TlsController, agent_args, run_cli, telltale_cmd

from telltale import pki
from telltale.devcluster import wait_for
from telltale.netutil import free_tcp_port
from telltale.procutil import tied_to_parent
from telltale.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    inventory_pb2,
    inventory_pb2_grpc,
    policy_pb2,
    policy_pb2_grpc,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory, tls: Pki) -> Iterator[TlsController]:
    with TlsController(tmp_path_factory.mktemp("tls-controller"), tls) as running:
        yield running


def node_ids(controller: TlsController) -> set[str]:
    with controller.channel(token=controller.admin_token()) as channel:
        nodes = inventory_pb2_grpc.InventoryServiceStub(channel).ListNodes(
            inventory_pb2.ListNodesRequest(), timeout=5
        )
    return {n.node_id for n in nodes.nodes}


def connect(channel: grpc.Channel, node_id: str) -> grpc.StatusCode:
    """Open an agent stream with a Hello for `node_id`; the status it ends with (OK if welcomed)."""
    requests: queue.SimpleQueue[agent_pb2.ConnectRequest | None] = queue.SimpleQueue()
    requests.put(agent_pb2.ConnectRequest(hello=agent_pb2.Hello(node_id=node_id, hostname="h")))

    def outgoing() -> Iterator[agent_pb2.ConnectRequest]:
        while (item := requests.get()) is not None:
            yield item

    call = agent_pb2_grpc.AgentServiceStub(channel).Connect(outgoing(), timeout=10)
    try:
        first = next(iter(call))
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    finally:
        requests.put(None)
    assert first.HasField("welcome")
    call.cancel()  # type: ignore[attr-defined]
    return grpc.StatusCode.OK


def test_an_agent_with_a_node_certificate_connects_as_that_node(
    controller: TlsController, tmp_path: Path
) -> None:
    """A real agent presenting node-n1's certificate connects over mutual TLS; node n1 appears,
    whatever node id its state directory held before."""
    cert = controller.tls.files("node", "n1")
    state = tmp_path / "agent"
    state.mkdir()
    (state / "node-id").write_text("something-else\n")
    log_path = tmp_path / "agent.log"
    with log_path.open("wb") as log:
        agent = subprocess.Popen(
            tied_to_parent(telltale_cmd("--log-level", "info", *agent_args(controller, state, cert))),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: "n1" in node_ids(controller), 30, "node n1 to register")
        assert "something-else" not in node_ids(controller)
    finally:
        agent.terminate()
        agent.wait(timeout=15)
    assert "connected to controller" in log_path.read_text(), log_path.read_text()


def test_an_agent_without_a_certificate_is_refused(controller: TlsController, tmp_path: Path) -> None:
    """The agent will not start without one (exit 2, naming the settings); a client without a
    certificate cannot complete the handshake on the agent port, and the API port refuses it the
    agent service."""
    out = run_cli(*agent_args(controller, tmp_path / "agent", None))
    assert out.returncode == 2
    assert "TLS is not configured" in out.stderr
    assert "tls_cert" in out.stderr
    with controller.channel(address=controller.agents) as channel:
        assert connect(channel, "n1") == grpc.StatusCode.UNAVAILABLE
    with controller.channel() as channel:
        assert connect(channel, "n1") == grpc.StatusCode.UNAUTHENTICATED


def test_a_node_certificate_only_speaks_for_its_own_node(controller: TlsController) -> None:
    """With node-n1's certificate, a Hello for n1 is welcomed and one for n2 is PERMISSION_DENIED."""
    with controller.channel(cert=controller.tls.files("node", "n1"), address=controller.agents) as channel:
        assert connect(channel, "n1") == grpc.StatusCode.OK
        assert connect(channel, "n2") == grpc.StatusCode.PERMISSION_DENIED
    assert "n2" not in node_ids(controller)


def test_a_certificate_from_another_ca_is_refused_at_the_handshake(
    controller: TlsController, tmp_path: Path
) -> None:
    pki.init_ca(tmp_path)
    pki.issue(tmp_path, "node", "n1")
    with controller.channel(
        cert=pki.cert_paths(tmp_path, "node", "n1"), address=controller.agents
    ) as channel:
        assert connect(channel, "n1") == grpc.StatusCode.UNAVAILABLE


def test_a_node_certificate_cannot_call_the_api_even_with_an_admin_token(controller: TlsController) -> None:
    """An agent identity speaks only the agent service; an API client certificate may carry a token."""
    request = policy_pb2.ListPoliciesRequest()
    node = controller.tls.files("node", "n1")
    with (
        controller.channel(cert=node, token=controller.admin_token(), address=controller.agents) as channel,
        pytest.raises(grpc.RpcError) as info,
    ):
        policy_pb2_grpc.PolicyServiceStub(channel).ListPolicies(request, timeout=5)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "only call telltale.v1.AgentService" in info.value.details()
    client = controller.tls.files("client", "console")
    with controller.channel(
        cert=client, token=controller.admin_token(), address=controller.agents
    ) as channel:
        assert policy_pb2_grpc.PolicyServiceStub(channel).ListPolicies(request, timeout=5).policies
    with (
        controller.channel(cert=client, address=controller.agents) as channel,
        pytest.raises(grpc.RpcError) as info,
    ):
        policy_pb2_grpc.PolicyServiceStub(channel).ListPolicies(request, timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_change_records_the_token_that_made_it(controller: TlsController) -> None:
    """A policy written with a token names that token (name and id) as its author, never its secret."""
    token = controller.admin_token()
    with controller.channel(token=token) as channel:
        stub = policy_pb2_grpc.PolicyServiceStub(channel)
        clone = stub.ClonePolicy(
            policy_pb2.ClonePolicyRequest(source="Standard", name="Authored"), timeout=10
        ).policy
    token_id = token.split("_")[1]
    assert clone.updated_by.startswith(f"token bootstrap (id {token_id}) from ipv")
    assert token.split("_")[2] not in clone.updated_by


def test_the_cli_speaks_tls_with_a_token_and_creates_lists_and_revokes_tokens(
    controller: TlsController, tmp_path: Path
) -> None:
    """`telltale token create` prints the token once; it works until revoked; no token: refused."""
    env = {
        "TELLTALE_CONTROLLER": controller.api,
        "TELLTALE_CA": str(controller.tls.ca),
        "TELLTALE_PLAINTEXT": "",
    }
    admin = ["--token-file", str(controller.bootstrap_file)]
    refused = run_cli("policy", "list", env=env)
    assert refused.returncode == 1
    assert "not authenticated" in refused.stderr
    created = run_cli(
        "token", "create", "--role", "viewer", "--name", "cli-viewer", "--expires-in", "1d", *admin, env=env
    )
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("tt_")
    token_id = token.split("_")[1]
    listed = run_cli("token", "list", *admin, env=env)
    assert token_id in listed.stdout
    assert token not in listed.stdout
    viewer_env = {**env, "TELLTALE_TOKEN": token}
    assert "Standard" in run_cli("policy", "list", env=viewer_env).stdout
    denied = run_cli("token", "list", env=viewer_env)
    assert denied.returncode == 1
    assert "needs the admin role" in denied.stderr
    assert run_cli("token", "revoke", token_id, *admin, env=env).returncode == 0
    wait_for(
        lambda: run_cli("policy", "list", env=viewer_env).returncode == 1,
        5,
        "the revoked token to be refused",
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen", "127.0.0.1:1"], "--tls-cert, --tls-key and --tls-ca"),
        (["--listen", "0.0.0.0:1", "--plaintext"], "only allowed on a loopback address"),
    ],
)
def test_the_controller_needs_tls_or_plaintext_on_loopback(
    tmp_path: Path, args: list[str], message: str
) -> None:
    out = run_cli("controller", "--data-dir", str(tmp_path), *args)
    assert out.returncode == 2
    assert message in out.stderr


def test_the_controller_refuses_a_key_that_is_not_its_certificates(tls: Pki, tmp_path: Path) -> None:
    ctl, node = tls.files("controller", "ctl"), tls.files("node", "n9")
    out = run_cli(
        "controller",
        "--data-dir",
        str(tmp_path),
        "--listen",
        "127.0.0.1:1",
        *("--tls-cert", str(ctl.cert), "--tls-key", str(node.key), "--tls-ca", str(tls.ca)),
    )
    assert out.returncode == 2
    assert "does not belong to the certificate" in out.stderr


def test_a_plaintext_controller_says_that_authentication_is_off(tmp_path: Path) -> None:
    """--plaintext serves on loopback, and its log warns that there is no TLS and no authentication."""
    log_path = tmp_path / "controller.log"
    listen = f"127.0.0.1:{free_tcp_port()}"
    args = ("controller", "--plaintext", "--listen", listen, "--data-dir", str(tmp_path / "data"))
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            tied_to_parent(telltale_cmd(*args)), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_for(lambda: "serving on" in log_path.read_text(), 60, "the plaintext controller to serve")
    finally:
        process.terminate()
        process.wait(timeout=15)
    text = log_path.read_text()
    assert "plaintext mode: no TLS and no authentication, every caller is an admin" in text
