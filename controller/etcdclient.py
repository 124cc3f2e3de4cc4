"""The etcd client of a controller: several endpoints, TLS and user/password authentication.

aetcd 1.0 dials one ``host:port`` over an insecure channel. `EtcdClient` keeps aetcd's API and
behaviour and only builds the channel differently:

- plaintext: every endpoint of the cluster in one gRPC target (``ipv4:h1:p1,h2:p2`` /
  ``ipv6:[a]:p,…``) balanced round robin, so the client survives the loss of any member;
- TLS (`grpc.ssl_channel_credentials`, when the endpoints say ``https://`` or a CA / client
  certificate is given): one channel at a time, to one endpoint, which checks that member's
  certificate against that endpoint's own name (a multi-address target would check every member
  against one name). When a request fails with UNAVAILABLE the client moves to the next endpoint,
  as etcd's Go client does: it closes the channel, opens one to the next endpoint (names resolved
  by gRPC then, not once at start), authenticates again, and retries the request there if it
  cannot have reached etcd (the connection failed, or the member had no leader); otherwise the
  error goes to the caller, who retries. Watches on the old channel end, and their owners watch
  again (policies.py, duties.py, membership.py already do after any watch error or end);
- an etcd user authenticated once per connection, and again when etcd says the token expired.

The password never appears in a repr, a log line or an error message.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aetcd
import grpc
from aetcd import rpc
from aetcd import watcher as aetcd_watcher

from telltale.netutil import split_host_port

log = logging.getLogger(__name__)

# Listings read whole prefixes; grpc's default 4 MiB would cap them far too low.
MAX_RECEIVE_BYTES = 256 * 1024 * 1024
REQUEST_TIMEOUT_S = 10
RETIRE_GRACE_S = 1.0  # after a fail-over, how long requests in flight on the old channel may finish


class EtcdConfigError(ValueError):
    """The etcd connection settings are unusable; the message names the flag."""


class EtcdAuthError(aetcd.ClientError):  # type: ignore[misc]
    """etcd refused the configured user (or its password)."""


@dataclass(frozen=True)
class EtcdSettings:
    """How to reach the etcd cluster (built from the controller's --etcd-* flags)."""

    endpoints: tuple[str, ...]
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    user: str = ""
    password: str = field(default="", repr=False)

    @property
    def tls(self) -> bool:
        """True when the channel is TLS: https:// endpoints, or any certificate given."""
        return any(e.startswith("https://") for e in self.endpoints) or any(
            p is not None for p in (self.ca, self.cert, self.key)
        )

    def addresses(self) -> list[tuple[str, int]]:
        """The endpoints as (host, port); raises EtcdConfigError naming the flag."""
        if not self.endpoints:
            raise EtcdConfigError("--etcd-endpoints: no endpoint given")
        schemes = {e.split("://", 1)[0] if "://" in e else "" for e in self.endpoints}
        if len(schemes - {""}) > 1 or ("" in schemes and "https" in schemes):
            raise EtcdConfigError("--etcd-endpoints: mixes http:// and https:// endpoints")
        addresses = []
        for endpoint in self.endpoints:
            scheme, sep, rest = endpoint.partition("://")
            if not sep:
                scheme, rest = "", endpoint
            if scheme not in ("", "http", "https"):
                raise EtcdConfigError(f"--etcd-endpoints: {endpoint!r}: only http:// and https:// are known")
            try:
                addresses.append(split_host_port(rest.rstrip("/")))
            except ValueError as exc:
                raise EtcdConfigError(f"--etcd-endpoints: {exc}") from None
        return addresses

    def validate(self) -> None:
        """Raise EtcdConfigError naming the first unusable setting."""
        self.addresses()
        if self.tls and any(e.startswith("http://") for e in self.endpoints):
            raise EtcdConfigError(
                "--etcd-endpoints: http:// endpoints with --etcd-ca/--etcd-cert/--etcd-key; use https://"
            )
        if (self.cert is None) != (self.key is None):
            raise EtcdConfigError("--etcd-cert and --etcd-key go together: give both or neither")
        for flag, path in (("--etcd-ca", self.ca), ("--etcd-cert", self.cert), ("--etcd-key", self.key)):
            if path is not None and not path.is_file():
                raise EtcdConfigError(f"{flag}: {path} is not a readable file")
        if self.user and not self.password:
            raise EtcdConfigError(
                "--etcd-user needs a password: --etcd-password-file or $TELLTALE_ETCD_PASSWORD"
            )
        if self.password and not self.user:
            raise EtcdConfigError("an etcd password was given without --etcd-user")

    def describe(self) -> str:
        """The endpoints and options for a log line (never the password)."""
        extras = [x for x, on in (("tls", self.tls), (f"user {self.user}", bool(self.user))) if on]
        return ",".join(self.endpoints) + (f" ({', '.join(extras)})" if extras else "")


def channel_target(addresses: list[tuple[str, int]]) -> str:
    """One gRPC target naming every address: ``host:port`` for one endpoint, else the resolved
    addresses under the ``ipv4:`` or ``ipv6:`` scheme (IPv4 addresses become v4-mapped IPv6 ones
    when the two families mix). Raises OSError when a host name does not resolve."""
    if len(addresses) == 1:
        host, port = addresses[0]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    resolved: list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]] = []
    for host, port in addresses:
        try:
            resolved.append((ipaddress.ip_address(host), port))
        except ValueError:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            resolved.append((ipaddress.ip_address(infos[0][4][0]), port))
    if all(isinstance(ip, ipaddress.IPv4Address) for ip, _ in resolved):
        return "ipv4:" + ",".join(f"{ip}:{port}" for ip, port in resolved)
    as_v6 = [
        (ipaddress.IPv6Address(f"::ffff:{ip}") if isinstance(ip, ipaddress.IPv4Address) else ip, port)
        for ip, port in resolved
    ]
    return "ipv6:" + ",".join(f"[{ip}]:{port}" for ip, port in as_v6)


def _token_expired(exc: grpc.aio.AioRpcError) -> bool:
    """etcd's answer to a request whose auth token expired (simple tokens live --auth-token-ttl,
    5 minutes by default, from their last use; JWTs a fixed time)."""
    return exc.code() == grpc.StatusCode.UNAUTHENTICATED and "invalid auth token" in (exc.details() or "")


def _not_delivered(exc: grpc.aio.AioRpcError) -> bool:
    """True when an UNAVAILABLE request cannot have been applied by etcd: the connection could not
    be made, or the member had no leader (etcd refuses before proposing). Safe to send again."""
    details = (exc.details() or "").lower()
    return exc.code() == grpc.StatusCode.UNAVAILABLE and (
        "failed to connect" in details or "connection refused" in details or "no leader" in details
    )


class _Reauthenticating:
    """A gRPC stub of the client's current channel whose unary calls authenticate again, once,
    when etcd says the token expired; and, on a client that fails over (TLS, several endpoints),
    move the client to the next endpoint on UNAVAILABLE, sending the request again there when it
    cannot have been delivered (at most once per endpoint).

    aetcd authenticates once per connection and passes ``metadata=client.metadata`` to every call;
    a retried call gets the current token instead."""

    def __init__(self, stub: Any, client: EtcdClient, attribute: str, channel: grpc.aio.Channel) -> None:
        self._stub = stub
        self._client = client
        self._attribute = attribute  # the client's attribute holding the current wrapper
        self._channel = channel

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._stub, name)
        if not isinstance(method, grpc.aio.UnaryUnaryMultiCallable):
            return method

        async def call(request: Any, **kwargs: Any) -> Any:
            current = self
            attempts = self._client.endpoint_count if self._client.fails_over else 1
            for attempt in range(attempts):
                try:
                    return await current._authenticated(name, request, kwargs)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE or not self._client.fails_over:
                        raise
                    await self._client.fail_over(current._channel, exc)
                    if not _not_delivered(exc) or attempt == attempts - 1:
                        raise
                current = getattr(self._client, self._attribute)
                if "metadata" in kwargs:
                    kwargs["metadata"] = self._client.metadata
            raise AssertionError("unreachable")

        return call

    async def _authenticated(self, name: str, request: Any, kwargs: dict[str, Any]) -> Any:
        method = getattr(self._stub, name)
        try:
            return await method(request, **kwargs)
        except grpc.aio.AioRpcError as exc:
            if not _token_expired(exc):
                raise
        await self._client.reauthenticate()
        kwargs["metadata"] = self._client.metadata
        return await method(request, **kwargs)


class EtcdClient(aetcd.Client):  # type: ignore[misc]
    """aetcd's client on a channel to the endpoints (see the module's docstring), with TLS and
    authentication as configured."""

    channel: grpc.aio.Channel | None
    _is_connecting: bool
    metadata: tuple[tuple[str, str], ...] | None

    def __init__(self, settings: EtcdSettings, *, timeout: int = REQUEST_TIMEOUT_S) -> None:
        """Raises EtcdConfigError for unusable settings (before any connection is attempted)."""
        settings.validate()
        self.settings = settings
        self._addresses = settings.addresses()
        self._current = 0  # with TLS: the index of the endpoint in use
        self._switch_lock = asyncio.Lock()
        host, port = self._addresses[0]
        options: dict[str, Any] = {
            "grpc.max_receive_message_length": MAX_RECEIVE_BYTES,
            # Notice a dead member soon, also while only a watch stream is open.
            "grpc.keepalive_time_ms": 10_000,
            "grpc.keepalive_timeout_ms": 5_000,
            "grpc.keepalive_permit_without_calls": 1,
        }
        if not settings.tls:
            options["grpc.lb_policy_name"] = "round_robin"
        self._auth_lock = asyncio.Lock()
        super().__init__(
            host=host,
            port=port,
            username=settings.user or None,
            password=settings.password or None,
            timeout=timeout,
            options=options,
        )

    @property
    def endpoint_count(self) -> int:
        """How many endpoints the client may use."""
        return len(self._addresses)

    @property
    def fails_over(self) -> bool:
        """True when the client uses one endpoint at a time and moves on failure (TLS, several
        endpoints); False when one channel spans them all (plaintext) or there is only one."""
        return self.settings.tls and len(self._addresses) > 1

    @property
    def endpoint(self) -> str:
        """The endpoint in use ("host:port"; every endpoint, comma-separated, without TLS)."""
        if self.fails_over:
            return channel_target([self._addresses[self._current]])
        return ",".join(channel_target([a]) for a in self._addresses)

    def _channel(self) -> grpc.aio.Channel:
        options = list(self._options.items())
        if not self.settings.tls:
            return grpc.aio.insecure_channel(channel_target(self._addresses), options=options)
        s = self.settings
        credentials = grpc.ssl_channel_credentials(
            root_certificates=s.ca.read_bytes() if s.ca else None,
            private_key=s.key.read_bytes() if s.key else None,
            certificate_chain=s.cert.read_bytes() if s.cert else None,
        )
        # One endpoint: gRPC resolves its name and checks the member's certificate against it.
        target = channel_target([self._addresses[self._current]])
        return grpc.aio.secure_channel(target, credentials, options=options)

    async def _authenticate(self, channel: grpc.aio.Channel) -> None:
        """Authenticate the configured user on `channel` (nothing without a user). Raises
        EtcdAuthError when etcd refuses the user, grpc.aio.AioRpcError when it cannot answer."""
        if self._username is None or self._password is None:
            return
        self.auth_stub = rpc.AuthStub(channel)
        request = rpc.AuthenticateRequest(name=self._username, password=self._password)
        try:
            response = await self.auth_stub.Authenticate(request, timeout=self._timeout)
        except rpc.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                raise
            # etcd's message names neither the password nor the token.
            raise EtcdAuthError(f"etcd refused user {self._username!r}: {exc.details()}") from None
        self.metadata = (("token", response.token),)

    def _use(self, channel: grpc.aio.Channel) -> None:
        """Make `channel` the one every stub and new watch uses."""
        self.channel = channel
        self.kvstub = _Reauthenticating(rpc.KVStub(channel), self, "kvstub", channel)
        self.clusterstub = _Reauthenticating(rpc.ClusterStub(channel), self, "clusterstub", channel)
        self.leasestub = _Reauthenticating(rpc.LeaseStub(channel), self, "leasestub", channel)
        self.maintenancestub = _Reauthenticating(
            rpc.MaintenanceStub(channel), self, "maintenancestub", channel
        )
        # "hasleader": a member cut off from the quorum ends our watches instead of leaving
        # them silent, so they are re-established on a member that has a leader.
        watch_metadata = (*(self.metadata or ()), ("hasleader", "true"))
        self._watcher = aetcd_watcher.Watcher(
            rpc.WatchStub(channel), timeout=self._timeout, metadata=watch_metadata
        )

    async def _open(self) -> None:
        """Open a channel to the current endpoint (with TLS, trying the next ones while the user
        cannot be authenticated because a member is unreachable) and use it. Raises EtcdAuthError
        when etcd refuses the user, aetcd.ConnectionFailedError when no member answers."""
        attempts = self.endpoint_count if self.fails_over else 1
        for attempt in range(attempts):
            channel = self._channel()
            try:
                await self._authenticate(channel)
            except rpc.AioRpcError as exc:
                await channel.close(None)
                if attempt == attempts - 1:
                    raise aetcd.ConnectionFailedError(f"no etcd member answered: {exc.details()}") from None
                self._current = (self._current + 1) % len(self._addresses)
                continue
            except BaseException:
                await channel.close(None)
                raise
            self._use(channel)
            return

    async def connect(self) -> None:
        """Open the channel (and authenticate, if a user is configured); what aetcd's connect()
        does, on this client's channel. Raises aetcd.ClientError when etcd refuses the user."""
        if self._connected.is_set():
            return
        if self._is_connecting:
            await asyncio.wait_for(self._connected.wait(), self._connect_wait_timeout)
            return
        try:
            self._is_connecting = True
            await self._open()
            self._connected.set()
        finally:
            self._is_connecting = False

    async def fail_over(self, failed: grpc.aio.Channel | None, error: BaseException | None = None) -> None:
        """Move to the next endpoint after a request on `failed` found its member unavailable; a
        no-op when another request moved already (or the client does not fail over). The old
        channel is closed: its watches end, and their owners watch again on the new one."""
        if not self.fails_over:
            return
        async with self._switch_lock:
            if failed is not self.channel or not self._connected.is_set():
                return
            before = self.endpoint
            old_channel, old_watcher = self.channel, self._watcher
            self._current = (self._current + 1) % len(self._addresses)
            await self._open()
            log.warning(
                "etcd member %s unavailable (%s); using %s",
                before,
                error.details() if isinstance(error, grpc.aio.AioRpcError) else error or "no answer",
                self.endpoint,
            )
        if old_watcher is not None:
            with contextlib.suppress(Exception):
                await old_watcher.shutdown()
        if old_channel is not None:
            with contextlib.suppress(Exception):
                # Requests still in flight there (a member that is slow, not dead) get a moment.
                await old_channel.close(RETIRE_GRACE_S)

    async def reauthenticate(self) -> None:
        """Get a fresh auth token (after etcd said the current one expired); concurrent callers
        share one request. Raises EtcdAuthError when etcd refuses the user now."""
        stale = self.metadata
        async with self._auth_lock:
            if self.metadata != stale or self.auth_stub is None:
                return  # another caller refreshed it meanwhile
            request = rpc.AuthenticateRequest(name=self._username, password=self._password)
            try:
                response = await self.auth_stub.Authenticate(request, timeout=self._timeout)
            except rpc.AioRpcError as exc:
                raise EtcdAuthError(f"etcd refused user {self._username!r}: {exc.details()}") from None
            self.metadata = (("token", response.token),)
            if self._watcher is not None:
                # Used when the watch stream is opened again (aetcd keeps it in a private field).
                self._watcher._metadata = (*self.metadata, ("hasleader", "true"))

    async def refresh_lease(self, lease_id: int) -> Any:
        """aetcd's refresh_lease, authenticating again once if the token expired, and (failing
        over) moving to the next endpoint when the member is unavailable: a keepalive may be sent
        again."""
        attempts = self.endpoint_count if self.fails_over else 1
        for attempt in range(attempts):
            channel = self.channel
            try:
                return await self._refresh_lease_once(lease_id)
            except aetcd.ConnectionFailedError as exc:
                if not self.fails_over:
                    raise
                await self.fail_over(channel, exc)
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    async def _refresh_lease_once(self, lease_id: int) -> Any:
        try:
            return await super().refresh_lease(lease_id)
        except aetcd.UnauthenticatedError as exc:
            if "invalid auth token" not in str(exc) or self.auth_stub is None:
                raise
        await self.reauthenticate()
        return await super().refresh_lease(lease_id)

    def __repr__(self) -> str:
        return f"EtcdClient({self.settings.describe()})"
