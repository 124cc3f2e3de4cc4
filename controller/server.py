"""The controller process: startup and teardown in one place.

Startup order (each step needs the one before it):
  1. etcd — the configured cluster, or an embedded single member under the data directory
  2. the store client (every --etcd-endpoints member, TLS and user as configured; etcdclient.py)
  3. membership: registration on a lease, and the campaign for the singleton duties (seeding
     built-in policies, marking lapsed nodes offline, alert retention: duties.py), which the
     elected replica runs; a replica that finds no policy state at all seeds it first, so that it
     can serve before any leader did (compare-and-swap: replicas starting together are safe)
  4. the policy view loaded, then following the store's watch
  5. the gRPC server: agent, policy, catalog, alert and inventory services, health, reflection
Teardown runs in reverse: stop accepting and drain the gRPC server, stop following, resign and
revoke the lease, close the store client, stop the embedded etcd.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import stat
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aetcd
import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

import telltale
from telltale.controller import metrics
from telltale.controller.agent_service import AgentService
from telltale.controller.alert_service import AlertService
from telltale.controller.auth import AuthInterceptor, Authorizer, ServerTls, load_server_tls
from telltale.controller.catalog_service import CatalogService
from telltale.controller.duties import DEFAULT_CLOSED_AGE_S, DEFAULT_MAX_ALERTS, Retention, SingletonDuties
from telltale.controller.etcd import EmbeddedEtcd, spawn_embedded_etcd, wait_ready
from telltale.controller.etcdclient import EtcdAuthError, EtcdClient, EtcdConfigError, EtcdSettings
from telltale.controller.etcdstore import EtcdStore
from telltale.controller.inventory_service import InventoryService
from telltale.controller.membership import DEFAULT_LEASE_TTL_S, Membership
from telltale.controller.policies import PolicyView
from telltale.controller.policy_service import PolicyService
from telltale.controller.recent import RecentEvents
from telltale.controller.store import DEFAULT_PREFIX
from telltale.controller.token_service import TokenService
from telltale.controller.tokens import EtcdTokens, TokenVerifier, bootstrap_admin
from telltale.engine import builtin
from telltale.engine import policy as policy_model
from telltale.engine.countries import CountryLookup
from telltale.engine.geo import country_lookup
from telltale.netutil import is_loopback_host, split_host_port
from telltale.procutil import raise_open_file_limit
from telltale.v1 import (
    agent_pb2,
    alert_pb2,
    alert_pb2_grpc,
    catalog_pb2,
    catalog_pb2_grpc,
    inventory_pb2,
    inventory_pb2_grpc,
    policy_pb2,
    policy_pb2_grpc,
    token_pb2,
    token_pb2_grpc,
)

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:7443"
DEFAULT_AGENT_PORT = 7444  # the mTLS agent port, on the --listen host, unless --agent-listen says otherwise
SHUTDOWN_GRACE_S = 5.0


class ConfigError(ValueError):
    """The controller configuration is unusable; the message says which setting and why."""


@dataclass
class ControllerConfig:
    """Settings of one controller replica."""

    listen: str = DEFAULT_LISTEN
    data_dir: Path = Path("/var/lib/telltale/controller")
    etcd_endpoints: list[str] = field(default_factory=list)
    etcd_prefix: str = DEFAULT_PREFIX
    etcd_ca: Path | None = None  # CA of the etcd cluster's certificates (PEM)
    etcd_cert: Path | None = None  # client certificate for etcd (PEM), with etcd_key
    etcd_key: Path | None = None
    etcd_user: str = ""
    etcd_password_file: Path | None = None  # else etcd_password (from $TELLTALE_ETCD_PASSWORD)
    etcd_password: str = field(default="", repr=False)
    lease_ttl: int = DEFAULT_LEASE_TTL_S  # seconds: the replica's lease (registration, election)
    retention_closed_age_s: float = DEFAULT_CLOSED_AGE_S
    retention_max_alerts: int = DEFAULT_MAX_ALERTS
    plaintext: bool = False
    controller_id: str = ""
    geoip_database: Path | None = None
    country_overrides: Path | None = None
    metrics_listen: str = ""  # HOST:PORT of the Prometheus endpoint; "" = none
    tls_cert: Path | None = None  # the controller's certificate (PEM), for both ports
    tls_key: Path | None = None
    tls_ca: Path | None = None  # the CA that signs node (and API client) certificates
    agent_listen: str = ""  # the mTLS agent port; "" = the --listen host, port DEFAULT_AGENT_PORT
    bootstrap_token_file: Path | None = None  # write a first admin token here when none exists

    def validate(self) -> None:
        """Raise ConfigError naming the first unusable setting."""
        try:
            host, _ = split_host_port(self.listen)
        except ValueError as exc:
            raise ConfigError(f"--listen: {exc}") from exc
        tls_files = (self.tls_cert, self.tls_key, self.tls_ca)
        if self.plaintext and (any(tls_files) or self.agent_listen):
            raise ConfigError("--plaintext excludes --tls-cert, --tls-key, --tls-ca and --agent-listen")
        if not self.plaintext and not all(tls_files):
            raise ConfigError(
                "TLS is not configured: pass --tls-cert, --tls-key and --tls-ca (create them with "
                "`telltale pki`), or --plaintext to serve without encryption or authentication on "
                "loopback (for a local demo or tests only)"
            )
        if self.plaintext and not is_loopback_host(host):
            raise ConfigError(f"--plaintext is only allowed on a loopback address, not {host!r}")
        if not self.plaintext and self.agent_address() == self.listen:
            raise ConfigError(f"--agent-listen must differ from --listen ({self.listen})")
        self._validate_replica_settings()
        if self.metrics_listen:
            try:
                split_host_port(self.metrics_listen)
            except ValueError as exc:
                raise ConfigError(f"--metrics-listen: {exc}") from exc
        if not self.etcd_prefix.endswith("/"):
            raise ConfigError(f"--etcd-prefix must end with '/', got {self.etcd_prefix!r}")
        for flag, path in (
            ("--geoip-database", self.geoip_database),
            ("--country-overrides", self.country_overrides),
        ):
            if path is not None and not path.is_file():
                raise ConfigError(f"{flag}: {path} is not a readable file")

    def agent_address(self) -> str:
        """Where agents connect with mutual TLS: --agent-listen, else the --listen host on port
        DEFAULT_AGENT_PORT. (In plaintext mode agents use --listen.)"""
        if self.plaintext:
            return self.listen
        if self.agent_listen:
            try:
                split_host_port(self.agent_listen)
            except ValueError as exc:
                raise ConfigError(f"--agent-listen: {exc}") from exc
            return self.agent_listen
        host, _ = split_host_port(self.listen)
        return f"[{host}]:{DEFAULT_AGENT_PORT}" if ":" in host else f"{host}:{DEFAULT_AGENT_PORT}"

    def server_tls(self) -> ServerTls | None:
        """The TLS material (None in plaintext mode); ConfigError naming the flag of a bad file."""
        if self.plaintext or not (self.tls_cert and self.tls_key and self.tls_ca):
            return None
        try:
            return load_server_tls(self.tls_cert, self.tls_key, self.tls_ca)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def _validate_replica_settings(self) -> None:
        if self.etcd_endpoints:
            self.etcd_settings()
        else:
            given = [flag for flag, v in self._etcd_flags() if v]
            if given:
                raise ConfigError(f"{given[0]} needs --etcd-endpoints (the embedded etcd takes no options)")
        if self.lease_ttl < 2:
            raise ConfigError(f"--lease-ttl must be at least 2 seconds, got {self.lease_ttl}")
        if self.retention_closed_age_s <= 0:
            raise ConfigError(f"--retention-closed-age must be positive, got {self.retention_closed_age_s}")
        if self.retention_max_alerts < 1:
            raise ConfigError(f"--retention-max-alerts must be at least 1, got {self.retention_max_alerts}")

    def _etcd_flags(self) -> list[tuple[str, object]]:
        return [
            ("--etcd-ca", self.etcd_ca),
            ("--etcd-cert", self.etcd_cert),
            ("--etcd-key", self.etcd_key),
            ("--etcd-user", self.etcd_user),
            ("--etcd-password-file", self.etcd_password_file),
        ]

    def etcd_settings(self, endpoints: Sequence[str] = ()) -> EtcdSettings:
        """How to reach etcd: --etcd-endpoints (or `endpoints`, the embedded etcd's) and the TLS and
        user options; ConfigError naming the flag. Reads the password file."""
        password = self.etcd_password
        if self.etcd_password_file is not None:
            try:
                password = self.etcd_password_file.read_text().rstrip("\r\n")
            except OSError as exc:
                path = self.etcd_password_file
                raise ConfigError(f"--etcd-password-file: {path}: {exc.strerror}") from None
            if not password:
                raise ConfigError(f"--etcd-password-file: {self.etcd_password_file} is empty")
        settings = EtcdSettings(
            tuple(endpoints or self.etcd_endpoints),
            ca=self.etcd_ca,
            cert=self.etcd_cert,
            key=self.etcd_key,
            user=self.etcd_user,
            password=password,
        )
        try:
            settings.validate()
        except EtcdConfigError as exc:
            raise ConfigError(str(exc)) from None
        return settings

    def countries(self) -> CountryLookup:
        """The country lookup of the restricted-countries rules; raises ConfigError on a bad file."""
        try:
            return country_lookup(maxmind_path=self.geoip_database, override_path=self.country_overrides)
        except (OSError, ValueError) as exc:
            which = "--country-overrides" if self.country_overrides else "--geoip-database"
            raise ConfigError(f"{which}: {exc}") from exc


SERVICE_NAMES = (
    agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name,
    policy_pb2.DESCRIPTOR.services_by_name["PolicyService"].full_name,
    catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"].full_name,
    alert_pb2.DESCRIPTOR.services_by_name["AlertService"].full_name,
    inventory_pb2.DESCRIPTOR.services_by_name["InventoryService"].full_name,
    token_pb2.DESCRIPTOR.services_by_name["TokenService"].full_name,
)


async def serve(config: ControllerConfig, stop: asyncio.Event | None = None) -> None:  # noqa: PLR0915
    """Run a controller until `stop` is set or SIGINT/SIGTERM arrives.

    Raises ConfigError for bad settings and EtcdError when the embedded etcd cannot start.
    """
    config.validate()
    countries = config.countries()
    tls = config.server_tls()
    for flag, key in (("--tls-key", config.tls_key), ("--etcd-key", config.etcd_key)):
        if key is not None:
            warn_if_readable_by_others(flag, key)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    controller_id = config.controller_id or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    # Every agent stream holds a connection: a soft limit of 1,024 would cap the fleet near 1,000.
    open_files = raise_open_file_limit()

    embedded: EmbeddedEtcd | None = None
    async with contextlib.AsyncExitStack() as stack:
        # 1. etcd
        if config.etcd_endpoints:
            settings = config.etcd_settings()
        else:
            config.data_dir.mkdir(parents=True, exist_ok=True)
            # From the main thread: tied to it. Its ports must not take the one we are about to serve on.
            ours = {split_host_port(config.listen)[1], split_host_port(config.agent_address())[1]}
            embedded = spawn_embedded_etcd(config.data_dir, avoid_ports=ours)
            stack.callback(embedded.stop)
            await asyncio.to_thread(wait_ready, embedded)
            settings = config.etcd_settings([embedded.endpoint])
        endpoint = settings.describe()
        # 2. store
        client = EtcdClient(settings)
        try:
            await client.connect()
        except EtcdAuthError as exc:
            raise ConfigError(f"--etcd-user: {exc}") from None
        stack.push_async_callback(client.close)
        store = metrics.metered(EtcdStore(client, config.etcd_prefix))
        # 3. membership and the singleton duties
        builtins = [policy_model.to_proto(p) for p in builtin.load_builtin_policies().values()]

        async def seed() -> list[str]:
            return await store.seed_policies(builtins, builtin.DEFAULT_POLICY)

        if not (await store.policy_state()).default_policy:
            seeded = await seed()
            log.info("seeded built-in policies: %s", ", ".join(seeded), extra={"policies": seeded})
        membership = Membership(
            client,
            config.etcd_prefix,
            store,
            inventory_pb2.ControllerRecord(
                controller_id=controller_id,
                listen=config.listen,
                version=telltale.__version__,
                started_at=_now(),
            ),
            ttl=config.lease_ttl,
        )
        duties = SingletonDuties(
            store,
            seed,
            retention=Retention(config.retention_closed_age_s, config.retention_max_alerts),
            node_sweep_s=config.lease_ttl,
        )
        await membership.start(duties.run)
        stack.push_async_callback(membership.close)
        verifier = await _token_verifier(client, config)
        # 4. policy view
        policies = PolicyView(store, countries=countries)
        await policies.load()
        follower = asyncio.create_task(policies.follow(), name="policy-follow")
        stack.push_async_callback(_cancel, follower)
        # 5. gRPC server
        server = grpc.aio.server(
            interceptors=[metrics.RpcMetrics(), AuthInterceptor(Authorizer(verifier) if tls else None)],
            options=[
                ("grpc.max_receive_message_length", 16 * 1024 * 1024),
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ],
        )
        # The events this replica received, shared by the agent streams (which fill it) and the
        # policy dry run (which reads it).
        recent = RecentEvents()
        AgentService(store, policies, controller_id, recent, liveness=membership).register(server)
        policy_pb2_grpc.add_PolicyServiceServicer_to_server(PolicyService(store, policies, recent), server)
        catalog_pb2_grpc.add_CatalogServiceServicer_to_server(CatalogService(), server)
        alert_pb2_grpc.add_AlertServiceServicer_to_server(AlertService(store), server)
        inventory_pb2_grpc.add_InventoryServiceServicer_to_server(InventoryService(store, policies), server)
        token_pb2_grpc.add_TokenServiceServicer_to_server(TokenService(verifier.store, verifier), server)
        health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (
                *SERVICE_NAMES,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        _bind(server, config, tls)
        await server.start()
        stack.push_async_callback(server.stop, SHUTDOWN_GRACE_S)
        if config.metrics_listen:
            _serve_metrics(config.metrics_listen, policies, stack)
        for name in ("", *SERVICE_NAMES):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.warning(
            "telltale controller %s serving on %s (%s; etcd %s%s; up to %d open files)",
            controller_id,
            config.listen,
            "plaintext, loopback only"
            if tls is None
            else f"TLS, API tokens; agents with mutual TLS on {config.agent_address()}",
            endpoint,
            ", embedded" if embedded else "",
            open_files,
            extra={
                "controller_id": controller_id,
                "listen": config.listen,
                "etcd": endpoint,
                "etcd_embedded": embedded is not None,
                "policy_revision": policies.revision,
                "open_files": open_files,
            },
        )
        await stop.wait()
        log.warning("telltale controller %s stopping", controller_id, extra={"controller_id": controller_id})
        await health_servicer.enter_graceful_shutdown()


def warn_if_readable_by_others(flag: str, path: Path) -> bool:
    """Log a warning when the private key at `path` may be read by its group or by anyone (a key
    should be mode 0600, or 0640 for a dedicated group at most: say so). True when it warned."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False  # reading it reports the problem
    if not mode & (stat.S_IRWXG | stat.S_IRWXO):
        return False
    log.warning(
        "%s %s is readable by %s (mode %04o): a private key should be mode 0600 (chmod 600 %s)",
        flag,
        path,
        "everyone" if mode & stat.S_IRWXO else "its group",
        stat.S_IMODE(mode),
        path,
        extra={"flag": flag, "path": str(path)},
    )
    return True


def _serve_metrics(listen: str, policies: PolicyView, stack: contextlib.AsyncExitStack) -> None:
    """Serve the Prometheus endpoint on `listen` until `stack` closes; ConfigError if it cannot bind."""
    state = metrics.StateCollector(policies)
    metrics.REGISTRY.register(state)
    stack.callback(metrics.REGISTRY.unregister, state)
    try:
        endpoint = metrics.serve_metrics(*split_host_port(listen))
    except OSError as exc:
        raise ConfigError(f"--metrics-listen {listen}: {exc.strerror or exc}") from exc
    stack.callback(endpoint.close)
    log.info("metrics on http://%s/metrics", listen, extra={"metrics_listen": listen})


async def _token_verifier(client: aetcd.Client, config: ControllerConfig) -> TokenVerifier:
    """The API tokens in etcd, after creating the first admin token into --bootstrap-token-file
    when no token exists."""
    tokens = EtcdTokens(client, config.etcd_prefix)
    path = config.bootstrap_token_file
    if path is not None:
        try:
            created = await bootstrap_admin(tokens, path, now_ns=time.time_ns())
        except OSError as exc:
            raise ConfigError(f"--bootstrap-token-file: {path}: {exc.strerror or exc}") from None
        if created is None:
            log.info("tokens exist already: no bootstrap token written to %s", path)
        else:
            log.warning("no token existed: wrote admin token %s to %s (mode 0600)", created.id, path)
    return TokenVerifier(tokens)


def _bind(server: grpc.aio.Server, config: ControllerConfig, tls: ServerTls | None) -> None:
    """Open the ports: --listen alone in plaintext; with TLS, --listen for the API (bearer tokens)
    and the agent address with mutual TLS."""
    if tls is None:
        log.warning(
            "plaintext mode: no TLS and no authentication, every caller is an admin and agents are "
            "not authenticated (loopback only: for a local demo or tests)"
        )
        server.add_insecure_port(config.listen)
        return
    server.add_secure_port(config.listen, tls.api_credentials())
    server.add_secure_port(config.agent_address(), tls.agent_credentials())


def _now() -> Timestamp:
    now = Timestamp()
    now.GetCurrentTime()
    return now


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
