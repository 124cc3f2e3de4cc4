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
needed. A streaming call opened with a token checks it again (Recheck: every RECHECK_S, before a
response and while none flows, and at the token's expiry) and ends with UNAUTHENTICATED once the
token is revoked or expired. With auth off (plaintext mode on loopback) every caller is an
anonymous admin. Secrets are never logged: tokens are named by id.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
import time
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
    expires_ns: int = 0  # a token's expiry (ns since the epoch); 0: none, or not a token

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
        caller = Caller(f"token {record.name} (id {record.id})", role, expires_ns=record.expires_ns)
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

        async def check(context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
            """The caller, or the call aborted (Denied, or the store unavailable)."""
            assert authorizer is not None
            peer = peer_identity(context)
            try:
                metadata = cast(Iterable[tuple[str, str | bytes]], context.invocation_metadata() or ())
                return await authorizer.authorize(method, rule, peer, bearer_token(metadata))
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
            raise AssertionError("unreachable: context.abort raises")

        async def admit(context: grpc.aio.ServicerContext[Any, Any]) -> Recheck | None:
            if authorizer is None:
                _caller.set(PLAINTEXT_CALLER)
                return None
            caller = await check(context)
            _caller.set(caller)
            if caller.role is None:
                return None  # a certificate identity: fixed for the connection's life
            return Recheck(functools.partial(check, context), caller.expires_ns)

        return _guarded(handler, admit)


RECHECK_S: Final = 1.0
"""How often a streaming RPC opened with a token checks the token again (revocation, expiry)."""


@dataclass(frozen=True)
class Recheck:
    """How a streaming RPC opened with a token checks it again: `check()` returns the caller or
    aborts the call; `expires_ns` is the token's expiry (0: none)."""

    check: Callable[[], Awaitable[Caller]]
    expires_ns: int


Admit = Callable[[grpc.aio.ServicerContext[Any, Any]], Awaitable[Recheck | None]]


def _next_wait(last_check: float, expires_ns: int) -> float:
    """Seconds until the next check is due: RECHECK_S after the last one, or the token's expiry."""
    wait = last_check + RECHECK_S - time.monotonic()
    if expires_ns:
        wait = min(wait, (expires_ns - time.time_ns()) / 1e9)
    return max(wait, 0.0)


async def _check_again(recheck: Recheck, expiry: int) -> tuple[float, int]:
    """Check the token (or abort the call); the time of the check, and the expiry still to wake
    up for (0 once it has passed and the token was found valid anyway: no busy loop)."""
    await recheck.check()
    return time.monotonic(), expiry if expiry > time.time_ns() else 0


async def _rechecked_generator(responses: AsyncIterator[Any], recheck: Recheck) -> AsyncIterator[Any]:
    """`responses`, while the token they were opened with stays valid: it is checked again before a
    response when the last check is RECHECK_S old, every RECHECK_S while none flows, and at its
    expiry; a failed check aborts the call (UNAUTHENTICATED, or UNAVAILABLE)."""
    last_check, expiry = time.monotonic(), recheck.expires_ns
    pending: asyncio.Future[Any] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(responses))
            done, _ = await asyncio.wait({pending}, timeout=_next_wait(last_check, expiry))
            if _next_wait(last_check, expiry) <= 0:
                last_check, expiry = await _check_again(recheck, expiry)
            if not done:
                continue
            try:
                response = pending.result()
            except StopAsyncIteration:
                return
            finally:
                pending = None
            yield response
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pending
        with contextlib.suppress(Exception):
            await cast(Any, responses).aclose()


async def _rechecked_call(behaviour: Awaitable[Any], recheck: Recheck) -> Any:
    """Await a streaming behaviour that writes its responses itself, checking the token as
    _rechecked_generator does; a failed check cancels the behaviour and aborts the call."""
    task = asyncio.ensure_future(behaviour)
    last_check, expiry = time.monotonic(), recheck.expires_ns
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=_next_wait(last_check, expiry))
            if done:
                return task.result()
            last_check, expiry = await _check_again(recheck, expiry)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _guarded(handler: grpc.RpcMethodHandler[Any, Any], admit: Admit) -> grpc.RpcMethodHandler[Any, Any]:
    """`handler` with `admit(context)` awaited before its behaviour runs; a streaming response
    opened with a token ends when the token is revoked or expires (Recheck)."""
    streaming = handler.unary_stream is not None or handler.stream_stream is not None

    def wrap(inner: Behavior) -> Behavior:
        if inspect.isasyncgenfunction(inner):

            async def generator(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                recheck = await admit(context)
                responses = inner(request, context)
                if recheck is not None:
                    responses = _rechecked_generator(responses, recheck)
                async for response in responses:
                    yield response

            return generator

        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            recheck = await admit(context)
            if streaming and recheck is not None:
                return await _rechecked_call(inner(request, context), recheck)
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
