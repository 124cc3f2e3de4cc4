"""The authorization matrix: every RPC of every service, called by every kind of caller, against two
TLS controllers (real processes) sharing one etcd.

An RPC is enumerated from the service descriptors, so a new RPC is in the matrix at once (and is
refused until controller.auth gives it a rule). "Allowed" means neither PERMISSION_DENIED nor
UNAUTHENTICATED: the empty request may well be invalid.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor, message_factory
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from tlskit import Pki, TlsController

import telltale.v1
from telltale import pki
from telltale.controller.auth import NODE, OPEN, Rule, rule_for
from telltale.controller.etcd import EmbeddedEtcd, spawn_embedded_etcd, wait_ready
from telltale.controller.tokens import Role
from telltale.devcluster import wait_for
from telltale.v1 import catalog_pb2, catalog_pb2_grpc, token_pb2, token_pb2_grpc

pytestmark = pytest.mark.e2e

STREAM_WAIT_S = 0.5  # an allowed stream that stays open ends with DEADLINE_EXCEEDED after this


def services() -> list[descriptor.ServiceDescriptor]:
    """Every service of the telltale.v1 API, plus health checking and reflection."""
    found = [
        health_pb2.DESCRIPTOR.services_by_name["Health"],
        reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
    ]
    for info in pkgutil.iter_modules(telltale.v1.__path__):
        if info.name.endswith("_pb2"):
            module = importlib.import_module(f"telltale.v1.{info.name}")
            found += module.DESCRIPTOR.services_by_name.values()
    return found


METHODS = [method for service in services() for method in service.methods]


@dataclass(frozen=True)
class Caller:
    """One kind of caller: its token's role (if any), its certificate (if any), the port it uses."""

    name: str
    role: Role | None = None
    cert: tuple[pki.Kind, str] | None = None

    def expect(self, rule: Rule | None) -> str:
        """ "allowed", "unauthenticated" or "denied" for an RPC with `rule`."""
        node = self.cert is not None and self.cert[0] == "node"
        if rule == OPEN:
            return "allowed"
        if rule == NODE:
            if node:
                return "allowed"
            return "denied" if self.role is not None or self.cert is not None else "unauthenticated"
        if node:
            return "denied"
        if self.role is None:
            return "unauthenticated"
        assert isinstance(rule, Role)
        return "allowed" if self.role >= rule else "denied"


CALLERS = [
    Caller("no credentials"),
    Caller("viewer", Role.VIEWER),
    Caller("operator", Role.OPERATOR),
    Caller("admin", Role.ADMIN),
    Caller("node", cert=("node", "n1")),
    Caller("node with an admin token", Role.ADMIN, cert=("node", "n1")),
    Caller("client certificate without a token", cert=("client", "console")),
    Caller("client certificate with a viewer token", Role.VIEWER, cert=("client", "console")),
]


@dataclass
class Cluster:
    first: TlsController
    second: TlsController
    tokens: dict[Role, str]
    secrets: list[str]  # every bearer token created by this module: none may be logged


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedEtcd]:
    server = spawn_embedded_etcd(tmp_path_factory.mktemp("etcd"))
    try:
        wait_ready(server)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, etcd: EmbeddedEtcd) -> Iterator[Cluster]:
    """Two TLS controllers on one etcd; the first bootstraps the admin token, which creates the others."""
    tls = Pki.create(tmp_path_factory.mktemp("pki"))
    work = tmp_path_factory.mktemp("matrix")
    with (
        TlsController(work / "a", tls, etcd_endpoint=etcd.endpoint, name="a") as first,
        TlsController(work / "b", tls, etcd_endpoint=etcd.endpoint, name="b") as second,
    ):
        assert not second.bootstrap_file.exists(), "a token existed: the second replica must not bootstrap"
        admin = first.admin_token()
        tokens = {Role.ADMIN: admin}
        with first.channel(token=admin) as channel:
            stub = token_pb2_grpc.TokenServiceStub(channel)
            for role in (Role.VIEWER, Role.OPERATOR):
                created = stub.CreateToken(
                    token_pb2.CreateTokenRequest(role=int(role), name=role.label),
                    timeout=10,  # type: ignore[arg-type]
                )
                tokens[role] = created.bearer_token
        yield Cluster(first, second, tokens, list(tokens.values()))


def call(channel: grpc.Channel, method: descriptor.MethodDescriptor) -> grpc.StatusCode:
    """Call `method` with an empty request; the status it ends with."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    request = message_factory.GetMessageClass(method.input_type)()
    response = message_factory.GetMessageClass(method.output_type)
    serialize, deserialize = request.SerializeToString, response.FromString
    try:
        if method.client_streaming:
            call = channel.stream_stream(path, serialize, deserialize)(iter(()), timeout=STREAM_WAIT_S)
            for _ in call:
                pass
        elif method.server_streaming:
            for _ in channel.unary_stream(path, serialize, deserialize)(request, timeout=STREAM_WAIT_S):
                pass
        else:
            channel.unary_unary(path, serialize, deserialize)(request, timeout=10)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


OUTCOME = {grpc.StatusCode.PERMISSION_DENIED: "denied", grpc.StatusCode.UNAUTHENTICATED: "unauthenticated"}


@pytest.mark.parametrize("caller", CALLERS, ids=[c.name for c in CALLERS])
def test_every_rpc_answers_each_caller_as_the_table_says(cluster: Cluster, caller: Caller) -> None:
    """Certificates go to the mutual-TLS agent port, token-only callers to the API port."""
    controller = cluster.first
    cert = controller.tls.files(*caller.cert) if caller.cert else None
    token = cluster.tokens[caller.role] if caller.role else None
    address = controller.agents if cert else controller.api
    wrong = []
    with controller.channel(token=token, cert=cert, address=address) as channel:
        for method in METHODS:
            path = f"/{method.containing_service.full_name}/{method.name}"
            code = call(channel, method)
            assert code != grpc.StatusCode.UNAVAILABLE, f"{path}: the controller was unavailable"
            got = OUTCOME.get(code, "allowed")
            expected = caller.expect(rule_for(path))
            if got != expected:
                wrong.append(f"{path}: expected {expected}, got {code.name}")
    assert not wrong, "\n".join(wrong)


def test_the_matrix_covers_every_telltale_rpc() -> None:
    paths = {f"/{m.containing_service.full_name}/{m.name}" for m in METHODS}
    assert len([p for p in paths if p.startswith("/telltale.v1.")]) >= 27
    assert all(rule_for(p) is not None for p in paths)


def catalog_status(controller: TlsController, token: str) -> grpc.StatusCode:
    with controller.channel(token=token) as channel:
        try:
            catalog_pb2_grpc.CatalogServiceStub(channel).ListAlertTypes(
                catalog_pb2.ListAlertTypesRequest(), timeout=5
            )
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def new_token(cluster: Cluster, role: Role, **fields: object) -> token_pb2.CreateTokenResponse:
    with cluster.first.channel(token=cluster.tokens[Role.ADMIN]) as channel:
        created = token_pb2_grpc.TokenServiceStub(channel).CreateToken(
            token_pb2.CreateTokenRequest(role=int(role), name="temp", **fields),  # type: ignore[arg-type]
            timeout=10,
        )
    cluster.secrets.append(created.bearer_token)
    return created


def test_a_token_revoked_through_one_replica_is_refused_by_the_other_within_a_second(
    cluster: Cluster,
) -> None:
    created = new_token(cluster, Role.VIEWER)
    assert catalog_status(cluster.second, created.bearer_token) == grpc.StatusCode.OK
    with cluster.first.channel(token=cluster.tokens[Role.ADMIN]) as channel:
        token_pb2_grpc.TokenServiceStub(channel).RevokeToken(
            token_pb2.RevokeTokenRequest(id=created.token.id), timeout=10
        )
    assert catalog_status(cluster.first, created.bearer_token) == grpc.StatusCode.UNAUTHENTICATED
    wait_for(
        lambda: catalog_status(cluster.second, created.bearer_token) == grpc.StatusCode.UNAUTHENTICATED,
        1.0,
        "the other replica to refuse the revoked token",
    )


def test_an_expired_token_is_refused(cluster: Cluster) -> None:
    request = token_pb2.CreateTokenRequest()
    request.expires_in.FromSeconds(1)
    created = new_token(cluster, Role.ADMIN, expires_in=request.expires_in)
    assert created.token.HasField("expires_at")
    wait_for(
        lambda: catalog_status(cluster.second, created.bearer_token) == grpc.StatusCode.UNAUTHENTICATED,
        5.0,
        "the token to expire",
    )
    with cluster.second.channel(token=created.bearer_token) as channel, pytest.raises(grpc.RpcError) as info:
        catalog_pb2_grpc.CatalogServiceStub(channel).ListAlertTypes(
            catalog_pb2.ListAlertTypesRequest(), timeout=5
        )
    assert "expired" in info.value.details()


def test_a_forged_secret_for_a_real_token_id_is_refused(cluster: Cluster) -> None:
    admin = cluster.tokens[Role.ADMIN]
    forged = admin[:-1] + ("A" if admin[-1] != "A" else "B")
    assert catalog_status(cluster.first, forged) == grpc.StatusCode.UNAUTHENTICATED


def test_no_token_is_ever_logged(cluster: Cluster, tmp_path: Path) -> None:
    """Runs last: neither controller's log (at debug level) holds any token's secret."""
    logs = cluster.first.log() + cluster.second.log()
    assert "refused" in logs  # the matrix was logged...
    for bearer in cluster.secrets:
        secret = bearer.split("_", 2)[2]
        assert secret not in logs  # ...without a secret
