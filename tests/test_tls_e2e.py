"""Mutual TLS end to end: a controller serving TLS and real agents with node certificates, as
processes on loopback ports."""

from __future__ import annotations

import contextlib
import queue
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    alert_pb2,
    alert_pb2_grpc,
    common_pb2,
    inventory_pb2,
    inventory_pb2_grpc,
    policy_pb2,
    policy_pb2_grpc,
    token_pb2,
    token_pb2_grpc,
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


class _Watch:
    """A WatchAlerts stream read on its own thread: when each response came, and how it ended."""

    def __init__(self, controller: TlsController, token: str) -> None:
        self.channel = controller.channel(token=token)
        self.responses: list[float] = []
        self.ended: tuple[float, grpc.StatusCode] | None = None
        self.call = alert_pb2_grpc.AlertServiceStub(self.channel).WatchAlerts(
            alert_pb2.WatchAlertsRequest(), timeout=60
        )
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for _ in self.call:
                self.responses.append(time.monotonic())
            self.ended = (time.monotonic(), grpc.StatusCode.OK)
        except grpc.RpcError as exc:
            self.ended = (time.monotonic(), exc.code())

    def close(self) -> None:
        self.call.cancel()  # type: ignore[attr-defined]
        self.thread.join(5)
        self.channel.close()


def _viewer(controller: TlsController, name: str, expires_s: int = 0) -> token_pb2.CreateTokenResponse:
    request = token_pb2.CreateTokenRequest(name=name, role=token_pb2.ROLE_VIEWER)
    if expires_s:
        request.expires_in.seconds = expires_s
    with controller.channel(token=controller.admin_token()) as channel:
        return token_pb2_grpc.TokenServiceStub(channel).CreateToken(request, timeout=10)  # type: ignore[no-any-return]


def _alerting_agent(
    controller: TlsController,
) -> tuple[queue.SimpleQueue[agent_pb2.ConnectRequest | None], Any]:
    """An agent stream of node web-01 that raises alerts when fed batches (see _batch)."""
    node = controller.tls.files("node", "web-01")
    channel = controller.channel(cert=node, address=controller.agents)
    requests: queue.SimpleQueue[agent_pb2.ConnectRequest | None] = queue.SimpleQueue()
    requests.put(agent_pb2.ConnectRequest(hello=agent_pb2.Hello(node_id="web-01", instance_id="i1")))

    def outgoing() -> Iterator[agent_pb2.ConnectRequest]:
        while (item := requests.get()) is not None:
            yield item

    call = agent_pb2_grpc.AgentServiceStub(channel).Connect(outgoing(), timeout=60)
    threading.Thread(target=_drain, args=(call,), daemon=True).start()
    return requests, (call, channel)


def _drain(call: Any) -> None:
    with contextlib.suppress(grpc.RpcError):
        for _ in call:
            pass


def _batch(seq: int) -> agent_pb2.ConnectRequest:
    """A batch in which a Python program launches a shell: an alert of the Standard policy."""
    workload = common_pb2.Workload(id="w-shop", application="shop")
    event = common_pb2.Event(
        kind=common_pb2.EVENT_KIND_EXEC,
        workload_id=workload.id,
        count=1,
        process=common_pb2.ProcessInfo(pid=10, exe="/usr/bin/python3"),
        exec=common_pb2.ExecDetail(path="/bin/sh"),
    )
    return agent_pb2.ConnectRequest(batch=agent_pb2.EventBatch(seq=seq, workloads=[workload], events=[event]))


def test_a_watch_ends_soon_after_its_token_is_revoked(controller: TlsController) -> None:
    """A WatchAlerts opened with a viewer token ends with UNAUTHENTICATED within ~2 s of RevokeToken,
    while changes keep flowing."""
    viewer = _viewer(controller, "watch-revoked")
    watch = _Watch(controller, viewer.bearer_token)
    requests, (call, channel) = _alerting_agent(controller)
    try:
        requests.put(_batch(1))
        wait_for(lambda: bool(watch.responses), 10, "the watch to see a change")
        with controller.channel(token=controller.admin_token()) as admin:
            token_pb2_grpc.TokenServiceStub(admin).RevokeToken(
                token_pb2.RevokeTokenRequest(id=viewer.token.id), timeout=10
            )
        revoked = time.monotonic()
        for seq in range(2, 10):
            requests.put(_batch(seq))  # each one updates the alert: a change for the watch
            time.sleep(0.3)
        wait_for(lambda: watch.ended is not None, 5, "the watch to end")
        assert watch.ended is not None
        assert watch.ended[1] == grpc.StatusCode.UNAUTHENTICATED
        assert watch.ended[0] - revoked < 2.5
        assert all(at < revoked + 1.5 for at in watch.responses)
    finally:
        requests.put(None)
        call.cancel()
        channel.close()
        watch.close()


def test_an_idle_watch_ends_when_its_token_expires(controller: TlsController) -> None:
    """A WatchAlerts opened with a token that expires in 2 s ends with UNAUTHENTICATED at about
    that time, although no change flows."""
    short = _viewer(controller, "watch-expiring", expires_s=2)
    opened = time.monotonic()
    watch = _Watch(controller, short.bearer_token)
    try:
        wait_for(lambda: watch.ended is not None, 6, "the watch to end")
        assert watch.ended is not None
        assert watch.ended[1] == grpc.StatusCode.UNAUTHENTICATED
        assert 1.0 < watch.ended[0] - opened < 3.5
    finally:
        watch.close()


def test_the_controller_warns_when_its_key_is_readable_by_others(
    controller: TlsController, tls: Pki, tmp_path: Path
) -> None:
    """A --tls-key that its group or everyone may read is named in a warning at start; 0600 is not."""
    ctl = tls.files("controller", "ctl")
    loose = tmp_path / "loose.key"
    loose.write_bytes(ctl.key.read_bytes())
    loose.chmod(0o644)
    careless = TlsController(tmp_path / "c", tls, log_level="warning")
    args = careless.args()
    args[args.index("--tls-key") + 1] = str(loose)
    careless.args = lambda: args  # type: ignore[method-assign]
    with careless:
        wait_for(lambda: "is readable by everyone" in careless.log(), 10, "the warning")
        assert f"--tls-key {loose}" in careless.log()
        assert "chmod 600" in careless.log()
    assert "is readable by" not in controller.log()  # the module's controller: keys of mode 0600
