"""The controller process: startup and teardown in one place.

Startup order (each step needs the one before it):
  1. etcd — the configured cluster, or an embedded single member under the data directory
  2. the store client
  3. built-in policies seeded (compare-and-swap, so replicas starting together are safe)
  4. the policy view loaded, then following the store's watch
  5. the gRPC server: agent, policy, catalog, alert and inventory services, health, reflection
Teardown runs in reverse: stop accepting and drain the gRPC server, stop following, close the
store client, stop the embedded etcd.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aetcd
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from telltale.controller.agent_service import AgentService
from telltale.controller.alert_service import AlertService
from telltale.controller.catalog_service import CatalogService
from telltale.controller.etcd import EmbeddedEtcd, spawn_embedded_etcd, wait_ready
from telltale.controller.etcdstore import EtcdStore
from telltale.controller.inventory_service import InventoryService
from telltale.controller.policies import PolicyView
from telltale.controller.policy_service import PolicyService
from telltale.controller.recent import RecentEvents
from telltale.controller.store import DEFAULT_PREFIX
from telltale.engine import builtin
from telltale.engine import policy as policy_model
from telltale.engine.countries import CountryLookup
from telltale.engine.geo import country_lookup
from telltale.netutil import is_loopback_host, split_host_port
from telltale.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    alert_pb2,
    alert_pb2_grpc,
    catalog_pb2,
    catalog_pb2_grpc,
    inventory_pb2,
    inventory_pb2_grpc,
    policy_pb2,
    policy_pb2_grpc,
)

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:7443"
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
    plaintext: bool = False
    controller_id: str = ""
    geoip_database: Path | None = None
    country_overrides: Path | None = None

    def validate(self) -> None:
        """Raise ConfigError naming the first unusable setting."""
        try:
            host, _ = split_host_port(self.listen)
        except ValueError as exc:
            raise ConfigError(f"--listen: {exc}") from exc
        if not self.plaintext:
            raise ConfigError(
                "TLS is not configured: pass --plaintext to serve without encryption on loopback "
                "(for a local demo or tests only)"
            )
        if not is_loopback_host(host):
            raise ConfigError(f"--plaintext is only allowed on a loopback address, not {host!r}")
        for endpoint in self.etcd_endpoints:
            try:
                split_host_port(endpoint.removeprefix("http://"))
            except ValueError as exc:
                raise ConfigError(f"--etcd-endpoints: {exc}") from exc
        if not self.etcd_prefix.endswith("/"):
            raise ConfigError(f"--etcd-prefix must end with '/', got {self.etcd_prefix!r}")
        for flag, path in (
            ("--geoip-database", self.geoip_database),
            ("--country-overrides", self.country_overrides),
        ):
            if path is not None and not path.is_file():
                raise ConfigError(f"{flag}: {path} is not a readable file")

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
)


async def serve(config: ControllerConfig, stop: asyncio.Event | None = None) -> None:
    """Run a controller until `stop` is set or SIGINT/SIGTERM arrives.

    Raises ConfigError for bad settings and EtcdError when the embedded etcd cannot start.
    """
    config.validate()
    countries = config.countries()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    controller_id = config.controller_id or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"

    embedded: EmbeddedEtcd | None = None
    async with contextlib.AsyncExitStack() as stack:
        # 1. etcd
        if config.etcd_endpoints:
            endpoint = config.etcd_endpoints[0].removeprefix("http://")
        else:
            config.data_dir.mkdir(parents=True, exist_ok=True)
            # From the main thread: tied to it. Its ports must not take the one we are about to serve on.
            embedded = spawn_embedded_etcd(config.data_dir, avoid_ports={split_host_port(config.listen)[1]})
            stack.callback(embedded.stop)
            await asyncio.to_thread(wait_ready, embedded)
            endpoint = embedded.endpoint
        host, port = split_host_port(endpoint)
        # 2. store
        client = aetcd.Client(
            host=host,
            port=port,
            timeout=10,
            # Listings read whole prefixes; grpc's default 4 MiB would cap them far too low.
            options={"grpc.max_receive_message_length": 256 * 1024 * 1024},
        )
        await client.connect()
        stack.push_async_callback(client.close)
        store = EtcdStore(client, config.etcd_prefix)
        # 3. built-in policies
        seeded = await store.seed_policies(
            [policy_model.to_proto(p) for p in builtin.load_builtin_policies().values()],
            builtin.DEFAULT_POLICY,
        )
        if seeded:
            log.info("seeded built-in policies: %s", ", ".join(seeded))
        # 4. policy view
        policies = PolicyView(store, countries=countries)
        await policies.load()
        follower = asyncio.create_task(policies.follow(), name="policy-follow")
        stack.push_async_callback(_cancel, follower)
        # 5. gRPC server
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", 16 * 1024 * 1024),
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ]
        )
        # The events this replica received, shared by the agent streams (which fill it) and the
        # policy dry run (which reads it).
        recent = RecentEvents()
        agent_pb2_grpc.add_AgentServiceServicer_to_server(
            AgentService(store, policies, controller_id, recent), server
        )
        policy_pb2_grpc.add_PolicyServiceServicer_to_server(PolicyService(store, policies, recent), server)
        catalog_pb2_grpc.add_CatalogServiceServicer_to_server(CatalogService(), server)
        alert_pb2_grpc.add_AlertServiceServicer_to_server(AlertService(store), server)
        inventory_pb2_grpc.add_InventoryServiceServicer_to_server(InventoryService(store, policies), server)
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
        server.add_insecure_port(config.listen)
        await server.start()
        stack.push_async_callback(server.stop, SHUTDOWN_GRACE_S)
        for name in ("", *SERVICE_NAMES):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.warning(
            "telltale controller %s serving on %s (plaintext, loopback only; etcd %s%s)",
            controller_id,
            config.listen,
            endpoint,
            ", embedded" if embedded else "",
        )
        await stop.wait()
        log.warning("telltale controller %s stopping", controller_id)
        await health_servicer.enter_graceful_shutdown()


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
