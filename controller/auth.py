"""Who may call what: the role table of every RPC, and the interceptor that enforces it.

Callers are identified two ways:

- a verified client certificate (mTLS, only on the controller's agent port): its
  ``telltale://KIND/NAME`` identity (telltale.pki). A *node* identity may call
  ``telltale.v1.AgentService`` and nothing else.
- a bearer token in the ``authorization: Bearer <token>`` metadata (controller.tokens), mapped to a
  role: viewer < operator < admin. A token never opens the agent service.

`RULES` names the minimum role of every RPC of every telltale.v1 service; health checking and
reflection are open to everyone. An RPC missing from the table is refused (fail closed), and a test
checks the table against the service descriptors.

No credentials: UNAUTHENTICATED. Credentials without the right: PERMISSION_DENIED, naming the role
needed. With auth off (plaintext mode on loopback) every caller is an anonymous admin. Secrets are
never logged: tokens are named by id.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, cast

import aetcd
import grpc

from telltale import pki
from telltale.controller.tokens import Role, TokenVerifier, Verdict
from telltale.pki import Identity, identity_of_pem

log = logging.getLogger(__name__)

OPEN: Final = "open"
NODE: Final = "node"
Rule = Role | Literal["open", "node"]

VIEWER, OPERATOR, ADMIN = Role.VIEWER, Role.OPERATOR, Role.ADMIN

# The minimum rule of every RPC, by service. Reads (List*, Get*, Watch*, and the side-effect-free
# ValidatePolicy and TestPolicy) are viewer; alert triage is operator; every write of policies,
# assignments and tokens is admin; the agent stream is for node identities only.
TABLE: Final[dict[str, dict[str, Rule]]] = {
    "telltale.v1.AgentService": {"Connect": NODE},
    "telltale.v1.PolicyService": {
        "ListPolicies": VIEWER,
        "GetPolicy": VIEWER,
        "CreatePolicy": ADMIN,
        "ClonePolicy": ADMIN,
        "UpdatePolicy": ADMIN,
        "DeletePolicy": ADMIN,
        "SetDefaultPolicy": ADMIN,
        "AssignPolicy": ADMIN,
        "UnassignPolicy": ADMIN,
        "ListAssignments": VIEWER,
        "ListPolicyRevisions": VIEWER,
        "ValidatePolicy": VIEWER,
        "TestPolicy": VIEWER,
    },
    "telltale.v1.CatalogService": {"ListAlertTypes": VIEWER, "GetAlertType": VIEWER},
    "telltale.v1.AlertService": {
        "ListAlerts": VIEWER,
        "GetAlert": VIEWER,
        "WatchAlerts": VIEWER,
        "UpdateAlertState": OPERATOR,
    },
    "telltale.v1.InventoryService": {
        "ListNodes": VIEWER,
        "GetNode": VIEWER,
        "ListApplications": VIEWER,
        "ListWorkloads": VIEWER,
    },
    "telltale.v1.TokenService": {"CreateToken": ADMIN, "ListTokens": ADMIN, "RevokeToken": ADMIN},
}
OPEN_SERVICES: Final = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)
RULES: Final[dict[str, Rule]] = {
    f"/{service}/{method}": rule for service, methods in TABLE.items() for method, rule in methods.items()
}


def rule_for(method: str) -> Rule | None:
    """The rule of the full method name ("/pkg.Service/Method"); None when it has none (refuse)."""
    if method.lstrip("/").rpartition("/")[0] in OPEN_SERVICES:
        return OPEN
    return RULES.get(method)


def rule_label(rule: Rule) -> str:
    """How docs and messages name a rule: "viewer", "operator", "admin", "node", "open"."""
    return rule.label if isinstance(rule, Role) else rule


@dataclass(frozen=True)
class Caller:
    """Who is calling, once authorized: shown as the actor of changes, never a secret."""

    name: str  # "token ops (id 0123456789ab)", "node n1", "anonymous (plaintext)"
    role: Role | None = None  # API role; None for a node identity
    node_id: str = ""  # set for a node identity

    def __str__(self) -> str:
        return self.name


PLAINTEXT_CALLER: Final = Caller("anonymous (plaintext, auth off)", Role.ADMIN)
_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("telltale_caller", default=None)


def current_caller() -> Caller | None:
    """The caller of the RPC being served (None outside an intercepted RPC)."""
    return _caller.get()


@functools.lru_cache(maxsize=1024)
def _identity_of(pem: bytes) -> Identity | None:
    return identity_of_pem(pem)


def peer_identity(context: grpc.aio.ServicerContext[Any, Any]) -> Identity | None:
    """The identity of the peer's verified client certificate, or None (no certificate: only the
    mTLS agent port asks for one, and gRPC verifies it against the client CA there)."""
    pems = list(context.auth_context().get("x509_pem_cert", ()))
    if not pems:
        return None
    return _identity_of(pems[0])


def node_identity(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The node id bound to the peer's certificate, or None when the peer presented no node certificate."""
    identity = peer_identity(context)
    return identity.name if identity is not None and identity.kind == "node" else None


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The bearer token of the `authorization` metadata; "" when it is there but not a single
    well-formed "Bearer <token>" value; None when absent."""
    values = [v for k, v in metadata or () if k.lower() == "authorization"]
    if not values:
        return None
    if len(values) > 1 or not isinstance(values[0], str):
        return ""
    scheme, _, token = values[0].strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


class Denied(Exception):
    """An RPC is refused; `code` is UNAUTHENTICATED or PERMISSION_DENIED."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class Authorizer:
    """Decides, per call, who the caller is and whether the rule lets them in."""

    def __init__(self, verifier: TokenVerifier) -> None:
        self.verifier = verifier

    async def authorize(
        self, method: str, rule: Rule | None, peer: Identity | None, bearer: str | None
    ) -> Caller:
        """The caller, or Denied. Raises the store's errors when a token cannot be checked."""
        if rule is None:
            raise Denied(grpc.StatusCode.PERMISSION_DENIED, f"{method}: no authorization rule; refused")
        if rule == NODE:
            if peer is not None and peer.kind == "node":
                return Caller(f"node {peer.name}", node_id=peer.name)
            if peer is not None or bearer is not None:
                raise Denied(
                    grpc.StatusCode.PERMISSION_DENIED,
                    "the agent service is only for node agents presenting a node certificate",
                )
            raise Denied(
                grpc.StatusCode.UNAUTHENTICATED,
                "the agent service needs a node certificate (mTLS, on the controller's agent port)",
            )
        if peer is not None and peer.kind == "node":
            raise Denied(
                grpc.StatusCode.PERMISSION_DENIED,
                f"node {peer.name}: a node identity may only call telltale.v1.AgentService",
            )
        if bearer is None:
            raise Denied(
                grpc.StatusCode.UNAUTHENTICATED,
                "no credentials: send an API token as 'authorization: Bearer <token>' metadata",
            )
        verdict, record = await self.verifier.verify(bearer)
        if verdict == Verdict.MALFORMED:
            raise Denied(grpc.StatusCode.UNAUTHENTICATED, "the API token is malformed")
        if verdict == Verdict.EXPIRED:
            raise Denied(grpc.StatusCode.UNAUTHENTICATED, "the API token has expired")
        if verdict != Verdict.OK or record is None:
            raise Denied(grpc.StatusCode.UNAUTHENTICATED, "the API token is unknown or revoked")
        role = Role(record.role)
        caller = Caller(f"token {record.name} (id {record.id})", role)
        assert isinstance(rule, Role)
        if role < rule:
            raise Denied(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{method} needs the {rule.label} role; {caller} has {role.label}",
            )
        return caller


Behavior = Callable[..., Any]


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Enforces `RULES` on every call; with `authorizer` None (plaintext mode) lets everyone in as
    `PLAINTEXT_CALLER`. Sets `current_caller()` for the servicer."""

    def __init__(self, authorizer: Authorizer | None) -> None:
        self.authorizer = authorizer

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        rule = rule_for(method)
        if handler is None or rule == OPEN:
            return handler
        authorizer = self.authorizer

        async def admit(context: grpc.aio.ServicerContext[Any, Any]) -> None:
            if authorizer is None:
                _caller.set(PLAINTEXT_CALLER)
                return
            peer = peer_identity(context)
            try:
                metadata = cast(Iterable[tuple[str, str | bytes]], context.invocation_metadata() or ())
                caller = await authorizer.authorize(method, rule, peer, bearer_token(metadata))
            except Denied as exc:
                log.info(
                    "refused %s from %s (%s): %s",
                    method,
                    context.peer(),
                    peer or "no certificate",
                    exc,
                    extra={"method": method, "code": exc.code.name},
                )
                await context.abort(exc.code, str(exc))
            except aetcd.ClientError as exc:
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    "cannot check the token now: the shared state (etcd) is unavailable "
                    f"({type(exc).__name__})",
                )
            _caller.set(caller)

        return _guarded(handler, admit)


def _guarded(
    handler: grpc.RpcMethodHandler[Any, Any],
    admit: Callable[[grpc.aio.ServicerContext[Any, Any]], Awaitable[None]],
) -> grpc.RpcMethodHandler[Any, Any]:
    """`handler` with `admit(context)` awaited before its behaviour runs."""

    def wrap(inner: Behavior) -> Behavior:
        if inspect.isasyncgenfunction(inner):

            async def generator(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                await admit(context)
                async for response in inner(request, context):
                    yield response

            return generator

        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await admit(context)
            return await inner(request, context)

        return call

    serializers = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary), **serializers)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream), **serializers)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary), **serializers)
    assert handler.stream_stream is not None
    return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream), **serializers)


@dataclass(frozen=True)
class ServerTls:
    """The controller's TLS material, read once at startup."""

    cert: bytes
    key: bytes
    client_ca: bytes

    def api_credentials(self) -> grpc.ServerCredentials:
        """The API port: server TLS; callers authenticate with bearer tokens. (grpcio cannot ask
        for an optional client certificate: without require_client_auth it asks for none.)"""
        return grpc.ssl_server_credentials([(self.key, self.cert)])

    def agent_credentials(self) -> grpc.ServerCredentials:
        """The agent port: mutual TLS, a client certificate signed by the client CA required."""
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)], root_certificates=self.client_ca, require_client_auth=True
        )


def load_server_tls(cert: Path, key: Path, client_ca: Path) -> ServerTls:
    """Read the controller's certificate, key and client CA; ValueError naming the flag at fault
    (unreadable file, not PEM, key not matching the certificate)."""
    material = []
    for flag, path in (("--tls-cert", cert), ("--tls-key", key), ("--tls-ca", client_ca)):
        try:
            material.append(path.read_bytes())
        except OSError as exc:
            raise ValueError(f"{flag}: {path}: {exc.strerror or exc}") from None
    problem = pki.check_pair(material[0], material[1])
    if problem:
        raise ValueError(f"--tls-cert/--tls-key: {problem}")
    if not pki.is_pem_certificate(material[2]):
        raise ValueError(f"--tls-ca: {client_ca} holds no PEM certificate")
    return ServerTls(*material)
