"""The node agent daemon: startup order, the controller link loop, and shutdown.

Startup order: the node identity, then the open file limit (raised to the hard limit: every shim
connection holds a descriptor), then signal handling (a stop request must never be lost), then the
intake socket (so workloads can report at once), then the batch flusher, then the controller link.
The agent is ready when the intake socket listens; events are spooled until a controller
acknowledges them, so the link may come up later. After a stop request the link is not retried.
"""

from __future__ import annotations

import logging
import random
import signal
from dataclasses import dataclass, field
from pathlib import Path

import trio
from google.protobuf.timestamp_pb2 import Timestamp

from telltale.netutil import is_loopback_host, split_host_port
from telltale.nodeagent import identity
from telltale.nodeagent.batcher import MAX_BATCH_AGE_S, Batcher, Counters, Spool
from telltale.nodeagent.defaults import DEFAULT_SOCKET, DEFAULT_STATE_DIR
from telltale.nodeagent.intake import Intake, Workloads, raise_open_file_limit
from telltale.nodeagent.link import Connector, GrpcConnector, LinkClosed, LinkSession
from telltale.v1 import agent_pb2, common_pb2

log = logging.getLogger(__name__)

WELCOME_TIMEOUT_S = 10.0
BACKOFF_MIN_S = 0.2
BACKOFF_MAX_S = 10.0
STOP_GRACE_S = 2.0


class ConfigError(ValueError):
    """The agent configuration is unusable; the message names the setting."""


@dataclass
class AgentConfig:
    """Settings of the node agent."""

    controllers: list[str] = field(default_factory=lambda: ["127.0.0.1:7443"])
    socket_path: Path = DEFAULT_SOCKET
    state_dir: Path = DEFAULT_STATE_DIR
    plaintext: bool = False
    spool_batches: int = 4096

    def validate(self) -> None:
        """Raise ConfigError naming the first unusable setting."""
        if not self.controllers:
            raise ConfigError("--controller: at least one controller address is needed")
        hosts = []
        for address in self.controllers:
            try:
                hosts.append((address, split_host_port(address)[0]))
            except ValueError:
                raise ConfigError(f"--controller: {address!r} is not HOST:PORT") from None
        if not self.plaintext:
            raise ConfigError(
                "TLS is not configured: pass --plaintext to talk to a controller on loopback without "
                "encryption (for a local demo or tests only)"
            )
        for address, host in hosts:
            if not is_loopback_host(host):
                raise ConfigError(
                    f"--controller: {address} is not a loopback address; --plaintext (no encryption) "
                    "is only allowed to a controller on this host"
                )
        if len(str(self.socket_path)) > 100:
            raise ConfigError(f"--socket: {self.socket_path} is too long for a unix socket path")


@dataclass
class AgentState:
    """What the running agent knows; shared by its tasks."""

    node_id: str
    spool: Spool
    workloads: Workloads
    applied_revision: int = 0
    last_acked_seq: int = 0
    synced_once: bool = False
    connected_to: str = ""


class Agent:
    """One node agent. `run()` until cancelled or signalled."""

    def __init__(self, config: AgentConfig, connector: Connector | None = None) -> None:
        config.validate()
        self.config = config
        self.connector = connector or GrpcConnector()
        # Stable across this object's reconnects: a controller seeing two instance ids for one node
        # id at once knows two agents claim that identity.
        self.instance_id = identity.instance_id()
        self.boot_id = identity.boot_id()
        self.stopping = False  # a stop was requested: the link is not retried any more
        counters = Counters()
        self.state = AgentState(
            node_id=identity.node_id(config.state_dir),
            spool=Spool(capacity=config.spool_batches, counters=counters),
            workloads=Workloads(),
        )
        self.batcher = Batcher(self.state.spool)
        self.intake = Intake(config.socket_path, self._on_event, counters, self.state.workloads)

    def _on_event(self, event: common_pb2.Event, workload: common_pb2.Workload | None) -> None:
        self.batcher.add(event, workload, trio.current_time())

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every part; `task_status.started()` once the intake socket listens."""
        open_file_limit = raise_open_file_limit()
        async with trio.open_nursery() as nursery:
            # Signals first: a stop request that arrives as soon as we are ready must be honoured.
            await nursery.start(self._stop_on_signals, nursery.cancel_scope)
            await nursery.start(self.intake.run)
            nursery.start_soon(self._flush_loop)
            nursery.start_soon(self._link_loop)
            log.warning(
                "telltale agent %s ready: shim socket %s, controllers %s, open file limit %d",
                self.state.node_id,
                self.config.socket_path,
                ", ".join(self.config.controllers),
                open_file_limit,
            )
            task_status.started()

    async def _stop_on_signals(
        self, scope: trio.CancelScope, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """On SIGINT/SIGTERM: close the open batch, give a connected link a moment to deliver, stop."""
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for signum in signals:
                log.warning("agent stopping on %s", signal.Signals(signum).name)
                self.stopping = True
                self.batcher.flush()
                spool = self.state.spool
                with trio.move_on_after(STOP_GRACE_S):
                    while self.state.connected_to and spool.batches:
                        await spool.wait_changed()
                if spool.batches:
                    log.warning("%d batches not acknowledged at exit", len(spool.batches))
                scope.cancel()
                return

    async def _flush_loop(self) -> None:
        while True:
            await trio.sleep(MAX_BATCH_AGE_S / 2)
            if self.batcher.due(trio.current_time()):
                self.batcher.flush()

    async def _link_loop(self) -> None:
        """Connect to the controllers in turn, with exponential backoff and jitter between failures.

        Returns when the link fails after a stop was requested.
        """
        delay = BACKOFF_MIN_S
        attempt = 0
        while True:
            endpoint = self.config.controllers[attempt % len(self.config.controllers)]
            attempt += 1
            try:
                async with self.connector.open(endpoint) as session:
                    await self._serve_session(session, endpoint)
            except* LinkClosed as group:  # nurseries deliver it inside an exception group
                reasons = "; ".join(str(e) for e in _leaves(group))
                if self.stopping:
                    log.info("controller %s: %s (stopping)", endpoint, reasons)
                else:
                    log.warning("controller %s: %s; retrying in %.1fs", endpoint, reasons, delay)
            if self.state.connected_to:
                delay = BACKOFF_MIN_S  # we were connected: start the backoff over
            self.state.connected_to = ""
            if self.stopping:
                return
            await trio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, BACKOFF_MAX_S)

    async def _serve_session(self, session: LinkSession, endpoint: str) -> None:
        state = self.state
        session.send(
            agent_pb2.ConnectRequest(
                hello=identity.hello(
                    state.node_id,
                    last_acked_seq=state.last_acked_seq,
                    applied_revision=state.applied_revision,
                    instance=self.instance_id,
                    boot=self.boot_id,
                )
            )
        )
        with trio.move_on_after(WELCOME_TIMEOUT_S) as waiting:
            first = await session.receive()
        if waiting.cancelled_caught:
            raise LinkClosed(f"no welcome within {WELCOME_TIMEOUT_S:.0f}s")
        if not first.HasField("welcome"):
            raise LinkClosed(f"expected welcome, got {first.WhichOneof('message')}")
        welcome = first.welcome
        spool = state.spool
        if not state.synced_once:
            # This process never talked to a controller: continue the node's sequence.
            spool.renumber_from(welcome.last_seq + 1)
            state.synced_once = True
        elif welcome.last_seq >= spool.next_seq:
            # The controller remembers batches this agent never sent (another agent with this node
            # id, a cloned machine): acknowledging would discard ours unsent. Continue its sequence.
            log.warning(
                "controller %s has recorded batch %d of node %s, but this agent numbered only up to "
                "%d; renumbering unacknowledged batches from %d",
                endpoint,
                welcome.last_seq,
                state.node_id,
                spool.next_seq - 1,
                welcome.last_seq + 1,
            )
            spool.renumber_from(welcome.last_seq + 1)
        spool.ack(welcome.last_seq)
        state.last_acked_seq = max(state.last_acked_seq, welcome.last_seq)
        state.connected_to = endpoint
        log.warning(
            "connected to controller %s (%s); %d batches to resend",
            endpoint,
            welcome.controller_id,
            len(spool.batches),
        )
        interval = max(welcome.heartbeat_interval_ms, 500) / 1000
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._send_batches, session, welcome.last_seq + 1)
            nursery.start_soon(self._heartbeats, session, interval)
            try:
                while True:
                    await self._handle_response(session, await session.receive())
            finally:
                nursery.cancel_scope.cancel()

    async def _send_batches(self, session: LinkSession, next_seq: int) -> None:
        spool = self.state.spool
        while True:
            for batch in spool.pending_from(next_seq):
                session.send(agent_pb2.ConnectRequest(batch=batch))
                next_seq = batch.seq + 1
            next_seq = max(next_seq, spool.batches[0].seq if spool.batches else next_seq)
            await spool.wait_beyond(next_seq)

    async def _heartbeats(self, session: LinkSession, interval: float) -> None:
        state = self.state
        counters = state.spool.counters
        while True:
            await trio.sleep(interval)
            now = Timestamp()
            now.GetCurrentTime()
            session.send(
                agent_pb2.ConnectRequest(
                    heartbeat=agent_pb2.Heartbeat(
                        time=now,
                        spooled_batches=len(state.spool.batches),
                        dropped_records=counters.dropped,
                        malformed_records=counters.malformed,
                        dropped_batches=counters.dropped_batches,
                        active_workloads=state.workloads.active,
                    )
                )
            )

    async def _handle_response(self, session: LinkSession, response: agent_pb2.ConnectResponse) -> None:
        which = response.WhichOneof("message")
        if which == "batch_ack":
            self.state.spool.ack(response.batch_ack.seq)
            self.state.last_acked_seq = max(self.state.last_acked_seq, response.batch_ack.seq)
        elif which == "policy_update":
            update = response.policy_update
            # Evaluation is central: the agent keeps the revision it runs under (enforcement of
            # block actions arrives with the enforcement work) and acknowledges it.
            self.state.applied_revision = update.revision
            session.send(
                agent_pb2.ConnectRequest(policy_applied=agent_pb2.PolicyApplied(revision=update.revision))
            )
            log.info("applied policy revision %d (%d policies)", update.revision, len(update.policies))


def _leaves(group: BaseExceptionGroup[LinkClosed]) -> list[BaseException]:
    """The exceptions inside a (possibly nested) exception group."""
    leaves: list[BaseException] = []
    for exc in group.exceptions:
        leaves.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return leaves


def run_agent(config: AgentConfig) -> None:
    """Run the agent in the calling thread until SIGINT/SIGTERM. Raises ConfigError on bad settings."""
    agent = Agent(config)
    trio.run(agent.run)
