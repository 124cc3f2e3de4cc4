"""The node agent daemon: startup order, the controller link loop, and shutdown.

Startup order: the node identity, then the spool (loaded from `state_dir/spool`: batches a
previous run left unacknowledged are sent first, under the numbers they had), then the firewall
(opened, or enforcement off and why), then the open file limit (raised to the hard limit: every
shim connection holds a descriptor), then signal handling (a stop request must never be lost), then
the intake socket (so workloads can report at once), then enforcement (the firewall reconciled with
what the last run applied, before any controller is reached), then host-state observation (its
first snapshot taken), then the batch flusher, then the controller link. The agent is ready — and
tells the service manager so — when all of that has started; events are spooled on disk until a
controller acknowledges them, so the link may come up later and a restart loses nothing already
spooled. After a stop request the link is not retried.
"""

from __future__ import annotations

import functools
import logging
import random
import signal
import threading
from dataclasses import dataclass

import trio
from google.protobuf.timestamp_pb2 import Timestamp

from telltale.nodeagent import identity
from telltale.nodeagent.batcher import MAX_BATCH_AGE_S, Batcher, Counters
from telltale.nodeagent.config import AgentConfig, ConfigError
from telltale.nodeagent.enforce import Firewall, open_firewall
from telltale.nodeagent.enforcer import Enforcer
from telltale.nodeagent.hostkernel import KernelHostState
from telltale.nodeagent.hoststate import HostStateSource, run_host_state
from telltale.nodeagent.intake import Intake, Workloads
from telltale.nodeagent.link import Connector, GrpcConnector, LinkClosed, LinkSession
from telltale.nodeagent.notify import notify
from telltale.nodeagent.spool import Spool
from telltale.procutil import raise_open_file_limit
from telltale.v1 import agent_pb2, common_pb2

log = logging.getLogger(__name__)

WELCOME_TIMEOUT_S = 10.0
BACKOFF_MIN_S = 0.2
BACKOFF_MAX_S = 10.0
STOP_GRACE_S = 2.0
SEND_WINDOW = 64  # batches sent and not yet acknowledged, at most
WORKLOAD_CHECK_S = 0.1  # how often new workloads are looked at for the policies they bring
ENFORCEMENT_RETRY_S = 10.0  # how often a failed firewall change is tried again
SPOOL_SYNC_S = 1.0  # how often finished spool segments are fsynced


@dataclass
class AgentState:
    """What the running agent knows; shared by its tasks."""

    node_id: str
    spool: Spool
    workloads: Workloads
    applied_revision: int = 0
    last_acked_seq: int = 0
    connected_to: str = ""


class Agent:
    """One node agent. `run()` until cancelled or signalled."""

    def __init__(
        self,
        config: AgentConfig,
        connector: Connector | None = None,
        *,
        firewall: Firewall | None = None,
        host_state: HostStateSource | None = None,
    ) -> None:
        """Build the agent from `config`; `firewall` and `host_state` replace the real ones (tests).

        Raises ConfigError on unusable settings, including `enforcement = "on"` where enforcement
        cannot work.
        """
        config.validate()
        self.config = config
        # With TLS the node id is the one its certificate names (the controller checks it).
        tls = None if config.plaintext else config.tls_material()
        self.connector = connector or GrpcConnector(tls=tls)
        # Stable across this object's reconnects: a controller seeing two instance ids for one node
        # id at once knows two agents claim that identity.
        self.instance_id = identity.instance_id()
        self.boot_id = identity.boot_id()
        self.stopping = False  # a stop was requested: the link is not retried any more
        counters = Counters()
        self.state = AgentState(
            node_id=tls.node_id if tls else identity.node_id(config.state_dir),
            spool=Spool(
                config.state_dir / "spool",
                capacity=config.spool_batches,
                max_bytes=config.spool_bytes,
                counters=counters,
            ),
            workloads=Workloads(),
        )
        self.batcher = Batcher(self.state.spool)
        self.intake = Intake(config.socket_path, self._on_event, counters, self.state.workloads)
        self.enforcer = _enforcer(config, firewall)
        self.host_state = host_state or (KernelHostState() if config.host_state else None)
        self.node_state: agent_pb2.NodeState | None = None  # the latest snapshot, sent at each connect
        self._session: LinkSession | None = None  # the connected session, if any

    def _on_event(self, events: list[bytes], workload: common_pb2.Workload | None) -> None:
        """The intake's sink: a run of serialized events of `workload` goes to the batcher."""
        self.batcher.extend(events, workload, trio.current_time())

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every part; `task_status.started()` once the intake socket listens."""
        open_file_limit = raise_open_file_limit()
        stop_syncing = threading.Event()
        syncer = threading.Thread(
            target=self._sync_forever, args=(stop_syncing,), name="spool-sync", daemon=True
        )
        syncer.start()
        try:
            await self._run_parts(open_file_limit, task_status)
        finally:
            stop_syncing.set()
            syncer.join()

    async def _run_parts(self, open_file_limit: int, task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as nursery:
            # Signals first: a stop request that arrives as soon as we are ready must be honoured.
            await nursery.start(self._stop_on_signals, nursery.cancel_scope)
            await nursery.start(self.intake.run)
            await nursery.start(self._enforce)
            if self.host_state is not None:
                observe = functools.partial(
                    run_host_state, poll_interval=self.config.host_state_poll_interval
                )
                await nursery.start(observe, self.host_state, self._on_node_state)
            nursery.start_soon(self._flush_loop)
            nursery.start_soon(self._link_loop)
            log.warning(
                "telltale agent %s ready: shim socket %s, controllers %s, open file limit %d, %s, %s",
                self.state.node_id,
                self.config.socket_path,
                ", ".join(self.config.controllers),
                open_file_limit,
                "host state observed" if self.host_state is not None else "host state not observed",
                self.enforcer.state.detail if not self.enforcer.active else "enforcement on",
            )
            notify("READY=1")
            task_status.started()

    async def _enforce(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Reconcile the firewall with what the last run applied, then follow new workloads, and
        retry a failed firewall change now and then."""
        await self.enforcer.reconcile_saved()
        task_status.started()
        workloads = self.state.workloads
        next_retry = trio.current_time() + ENFORCEMENT_RETRY_S
        while True:
            await trio.sleep(WORKLOAD_CHECK_S)
            await self.enforcer.on_workloads(workloads.by_id.values())
            if trio.current_time() >= next_retry:
                next_retry = trio.current_time() + ENFORCEMENT_RETRY_S
                await self.enforcer.retry_failed()

    def _on_node_state(self, state: agent_pb2.NodeState) -> None:
        """A changed host-state snapshot: kept for the next connect, sent now if connected."""
        self.node_state = state
        if self._session is not None:
            self._session.send(agent_pb2.ConnectRequest(node_state=state))

    async def _stop_on_signals(
        self, scope: trio.CancelScope, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """On SIGINT/SIGTERM: close the open batch, give a connected link a moment to deliver, stop."""
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for signum in signals:
                log.warning("agent stopping on %s", signal.Signals(signum).name)
                notify("STOPPING=1")
                self.stopping = True
                self.batcher.flush()
                spool = self.state.spool
                with trio.move_on_after(STOP_GRACE_S):
                    while self.state.connected_to and len(spool):
                        await spool.wait_changed()
                self.batcher.flush()  # what arrived during the grace period is spooled too
                if len(spool):
                    log.warning("%d batches not acknowledged at exit; they stay spooled", len(spool))
                spool.close()
                scope.cancel()
                return

    async def _flush_loop(self) -> None:
        while True:
            await trio.sleep(MAX_BATCH_AGE_S / 2)
            if self.batcher.due(trio.current_time()):
                self.batcher.flush()

    def _sync_forever(self, stop: threading.Event) -> None:
        """In a thread of its own: make finished spool segments durable (fsync), off the intake's
        path and unseen by trio, until `stop` is set."""
        spool = self.state.spool
        while not stop.wait(SPOOL_SYNC_S):
            if spool.pending_sync:
                spool.sync_closed()

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
                    enforcement=self.enforcer.state,
                    addresses=identity.node_addresses(self.node_state),
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
        if not spool.synced:
            # The spool's numbers are provisional (it never met a controller): continue the node's
            # sequence. A spool loaded from disk keeps its numbers: what the controller recorded
            # before a crash is recognised below by welcome.last_seq, never recorded twice.
            if not spool.renumber_from(welcome.last_seq + 1):
                raise LinkClosed(f"spool numbering could not be saved: {spool.directory} not writable")
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
            if not spool.renumber_from(welcome.last_seq + 1):
                raise LinkClosed(f"spool numbering could not be saved: {spool.directory} not writable")
        spool.ack(welcome.last_seq)
        state.last_acked_seq = max(state.last_acked_seq, welcome.last_seq)
        state.connected_to = endpoint
        log.warning(
            "connected to controller %s (%s); %d batches to resend",
            endpoint,
            welcome.controller_id,
            len(spool),
        )
        interval = max(welcome.heartbeat_interval_ms, 500) / 1000
        if self.node_state is not None:
            session.send(agent_pb2.ConnectRequest(node_state=self.node_state))
        self._session = session
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._send_batches, session, welcome.last_seq + 1)
                nursery.start_soon(self._heartbeats, session, interval)
                try:
                    while True:
                        await self._handle_response(session, await session.receive())
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            self._session = None

    async def _send_batches(self, session: LinkSession, next_seq: int) -> None:
        """Send spooled batches from `next_seq` on, in order, at most SEND_WINDOW unacknowledged.

        Batches are read from the spool one at a time as the window opens, so a full spool is
        never held in memory; one that cannot be read back is skipped (the spool counts it).
        """
        spool = self.state.spool
        while True:
            room = SEND_WINDOW - spool.count_below(next_seq)
            for seq in spool.seqs_from(next_seq, room):
                batch = spool.read(seq)
                if batch is not None:
                    session.send(agent_pb2.ConnectRequest(batch=batch))
                next_seq = seq + 1
            await spool.wait_changed()

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
                        spooled_batches=len(state.spool),
                        dropped_records=counters.dropped,
                        malformed_records=counters.malformed,
                        dropped_batches=counters.dropped_batches,
                        active_workloads=state.workloads.active,
                        enforcement=self.enforcer.state,
                    )
                )
            )

    async def _handle_response(self, session: LinkSession, response: agent_pb2.ConnectResponse) -> None:
        which = response.WhichOneof("message")
        if which == "batch_ack":
            self.state.spool.ack(response.batch_ack.seq)
            self.state.last_acked_seq = max(self.state.last_acked_seq, response.batch_ack.seq)
        elif which == "policy_update":
            # Evaluation is central: what the agent applies of a policy is its block rules. It
            # acknowledges the revision once the firewall holds it, or says why it could not.
            update = response.policy_update
            error = await self.enforcer.on_update(update)
            if not error:
                self.state.applied_revision = update.revision
            session.send(
                agent_pb2.ConnectRequest(
                    policy_applied=agent_pb2.PolicyApplied(
                        revision=update.revision, error=error, enforcement=self.enforcer.state
                    )
                )
            )
            if not error:
                log.info("applied policy revision %d (%d policies)", update.revision, len(update.policies))


def _enforcer(config: AgentConfig, firewall: Firewall | None) -> Enforcer:
    """The enforcer the configuration asks for; raises ConfigError when "on" cannot be honoured."""
    if config.enforcement == "off" and firewall is None:
        log.info(
            "enforcement off by configuration; a table left by an earlier run keeps blocking until "
            "`telltale agent --remove-enforcement` deletes it"
        )
        return Enforcer(
            None,
            config.state_dir,
            mode=common_pb2.ENFORCEMENT_MODE_OFF,
            reason="enforcement off by configuration",
        )
    reason = "enforcement on (supplied firewall)"
    if firewall is None:
        firewall, reason = open_firewall()
    if firewall is None:
        if config.enforcement == "on":
            raise ConfigError(f"enforcement = on, but enforcement cannot work here: {reason}")
        log.warning("enforcement off: %s", reason)
        return Enforcer(
            None,
            config.state_dir,
            mode=common_pb2.ENFORCEMENT_MODE_UNAVAILABLE,
            reason=f"enforcement off: {reason}",
        )
    return Enforcer(firewall, config.state_dir, mode=common_pb2.ENFORCEMENT_MODE_ACTIVE, reason=reason)


def _leaves(group: BaseExceptionGroup[LinkClosed]) -> list[BaseException]:
    """The exceptions inside a (possibly nested) exception group."""
    leaves: list[BaseException] = []
    for exc in group.exceptions:
        leaves.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return leaves


def run_agent(config: AgentConfig) -> None:
    """Run the agent in the calling thread until SIGINT/SIGTERM. Raises ConfigError on bad settings."""
    agent = Agent(config)
    try:
        trio.run(agent.run)
    finally:
        agent.state.spool.close()
