"""The agent daemon against an in-memory controller: hello, sequencing, resending, policies,
failover and heartbeats. Time is trio's autojump clock, so backoffs and intervals cost nothing."""

from __future__ import annotations

import functools
import itertools
import os
import re
import signal
import socket
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import trio
import trio.testing
from agentkit import CTL_A, CTL_B, SHOP, ack, add_batch, config, send_three_acknowledge_one, welcome
from helpers import eventually as poll_until

import telltale
from telltale.nodeagent import daemon, identity
from telltale.nodeagent import workload as descriptor
from telltale.nodeagent.batcher import U64_MAX
from telltale.nodeagent.config import ConfigError
from telltale.nodeagent.daemon import STOP_GRACE_S, WELCOME_TIMEOUT_S, Agent
from telltale.nodeagent.enforce import MemoryFirewall
from telltale.nodeagent.hoststate import MemoryHostState
from telltale.nodeagent.memlink import MemoryConnector
from telltale.v1 import agent_pb2, common_pb2, policy_pb2

DEADLINE_S = 60.0  # virtual seconds under the autojump clock
eventually = functools.partial(poll_until, within=DEADLINE_S)


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def pids(batches: Sequence[agent_pb2.EventBatch]) -> list[int]:
    return [e.process.pid for b in batches for e in b.events]


@trio.testing.trio_test
async def test_hello_carries_the_node_id_persisted_in_the_state_dir(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    connector = MemoryConnector()
    hellos: list[agent_pb2.Hello] = []
    for state in ("state", "state", "other-state"):
        agent = Agent(config(tmp_path, state=state), connector=connector)
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.run)
            with trio.fail_after(DEADLINE_S):
                session = await connector.controller(CTL_A).wait_session(len(hellos) + 1)
                await session.wait_for("hello")
            hellos.append(session.hello)
            nursery.cancel_scope.cancel()
    first, restarted, elsewhere = hellos
    assert first.node_id
    assert first.node_id == (tmp_path / "state" / "node-id").read_text().strip()
    assert restarted.node_id == first.node_id, "a restarted agent keeps its identity"
    assert elsewhere.node_id != first.node_id, "another state directory is another node"
    assert (first.hostname, first.agent_version) == (socket.gethostname(), telltale.__version__)
    assert (first.last_acked_seq, first.applied_policy_revision) == (0, 0)


@trio.testing.trio_test
async def test_a_fresh_agent_continues_the_sequence_the_controller_knows(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    connector = MemoryConnector()
    agent = Agent(config(tmp_path), connector=connector)
    async with trio.open_nursery() as nursery:
        add_batch(agent, pid=1)  # spooled before any controller was reached
        await nursery.start(agent.run)
        with trio.fail_after(DEADLINE_S):
            session = await connector.controller(CTL_A).wait_session()
            await session.wait_for("hello")
            session.push(welcome(last_seq=41))
            await session.wait_for("batch", 1)
            add_batch(agent, pid=2)
            await session.wait_for("batch", 2)
        assert [b.seq for b in session.batches] == [42, 43]
        assert pids(session.batches) == [1, 2]
        assert [w.id for w in session.batches[0].workloads] == ["w-shop"]
        nursery.cancel_scope.cancel()


@trio.testing.trio_test
async def test_unacknowledged_batches_are_resent_on_the_next_stream(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    connector = MemoryConnector()
    controller = connector.controller(CTL_A)
    agent = Agent(config(tmp_path), connector=connector)
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.run)
        with trio.fail_after(DEADLINE_S):
            first = await controller.wait_session()
            await first.wait_for("hello")
            await send_three_acknowledge_one(agent, first)
            first.end("controller restarted")

            second = await controller.wait_session(2)
            await second.wait_for("hello")
            assert second.hello.last_acked_seq == 1
            second.push(welcome(last_seq=1))
            await second.wait_for("batch", 2)
            add_batch(agent, pid=4)
            await second.wait_for("batch", 3)
        assert [b.seq for b in first.batches] == [1, 2, 3]
        assert [b.seq for b in second.batches] == [2, 3, 4], "acknowledged batch 1 is not sent again"
        assert pids(second.batches) == [2, 3, 4]
        nursery.cancel_scope.cancel()


@trio.testing.trio_test
async def test_a_stream_that_ends_before_its_welcome_is_retried(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    connector = MemoryConnector()
    controller = connector.controller(CTL_A)
    agent = Agent(config(tmp_path), connector=connector)
    async with trio.open_nursery() as nursery:
        add_batch(agent, pid=1)
        await nursery.start(agent.run)
        with trio.fail_after(DEADLINE_S):
            first = await controller.wait_session()
            await first.wait_for("hello")
            first.end("controller restarted")
            await first.wait_closed()
            second = await controller.wait_session(2)
            await second.wait_for("hello")
            second.push(welcome(last_seq=7))
            await second.wait_for("batch")
        assert first.batches == []
        assert [b.seq for b in second.batches] == [8], "the agent is still fresh: it renumbers"
        nursery.cancel_scope.cancel()


@trio.testing.trio_test
async def test_a_stream_that_does_not_start_with_a_welcome_is_left_and_retried(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    connector = MemoryConnector()
    controller = connector.controller(CTL_A)
    agent = Agent(config(tmp_path), connector=connector)
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.run)
        with trio.fail_after(DEADLINE_S):
            first = await controller.wait_session()
            first.push(ack(5))
            await first.wait_closed()
            second = await controller.wait_session(2)
            await second.wait_for("hello")
        assert agent.state.last_acked_seq == 0, "an ack before the welcome is not believed"
        nursery.cancel_scope.cancel()


@trio.testing.trio_test
async def test_a_controller_that_never_welcomes_is_abandoned_and_retried(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    connector = MemoryConnector()
    controller = connector.controller(CTL_A)
    agent = Agent(config(tmp_path), connector=connector)
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.run)
        with trio.fail_after(DEADLINE_S):
            first = await controller.wait_session()
            start = trio.current_time()
            await first.wait_closed()
            assert trio.current_time() - start >= WELCOME_TIMEOUT_S
            second = await controller.wait_session(2)
            await second.wait_for("hello")
        nursery.cancel_scope.cancel()


@trio.testing.trio_test
async def test_a_policy_update_is_answered_with_the_revision_applied(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    connector = MemoryConnector()
    agent = Agent(config(tmp_path), connector=connector)
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.run)
        with trio.fail_after(DEADLINE_S):
            session = await connector.controller(CTL_A).wait_session()
            session.push(welcome())
            for revision in (7, 9):
                session.push(
                    agent_pb2.ConnectResponse(
                        policy_update=agent_pb2.PolicyUpdate(revision=revision, default_policy="Standard")
                    )
                )
            await session.wait_for("policy_applied", 2)
        assert [p.revision for p in session.policies_applied] == [7, 9]
        assert all(p.error == "" for p in session.policies_applied)
        assert agent.state.applied_revision == 9
        nursery.cancel_scope.cancel()


@trio.testing.trio_test
async def test_the_agent_fails_over_to_the_next_controller(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    connector = MemoryConnector()
    connector.refuse(CTL_A)
    agent = Agent(config(tmp_path, controllers=[CTL_A, CTL_B]), connector=connector)
    async with trio.open_nursery() as nursery:
        add_batch(agent, pid=1)
        await nursery.start(agent.run)
        with trio.fail_after(DEADLINE_S):
            session = await connector.controller(CTL_B).wait_session()
            await session.wait_for("hello")
            session.push(welcome())
            await session.wait_for("batch")
        refused = connector.controller(CTL_A)
        assert refused.attempts >= 1
        assert refused.sessions == []
        assert agent.state.connected_to == CTL_B
        assert pids(session.batches) == [1]
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("interval_ms", "expected_s"), [(10, 0.5), (2_000, 2.0)])
@trio.testing.trio_test
async def test_heartbeats_report_the_counters_at_the_clamped_interval(
    tmp_path: Path, clock: trio.testing.MockClock, interval_ms: int, expected_s: float
) -> None:
    connector = MemoryConnector()
    agent = Agent(config(tmp_path), connector=connector)
    counters = agent.state.spool.counters
    counters.count_malformed(3)
    counters.count_dropped(5)
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.run)
        with trio.fail_after(DEADLINE_S):
            session = await connector.controller(CTL_A).wait_session()
            session.push(welcome(heartbeat_ms=interval_ms))
            arrivals = [trio.current_time()]
            for n in (1, 2):
                await session.wait_for("heartbeat", n)
                arrivals.append(trio.current_time())
        gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
        assert gaps == pytest.approx([expected_s, expected_s], abs=0.01)
        beat = session.heartbeats[0]
        assert (beat.malformed_records, beat.dropped_records, beat.dropped_batches) == (3, 5, 0)
        # The losses alone make a batch, so they reach the controller without waiting for events;
        # nobody acknowledges it here, so it stays spooled.
        assert (beat.spooled_batches, beat.active_workloads) == (1, 0)
        loss_report = session.batches[0]
        assert loss_report.malformed_records == 3
        assert loss_report.dropped_records == 5
        assert not loss_report.events
        assert beat.time.seconds > 0
        nursery.cancel_scope.cancel()


def _record(kind: int, *fields: tuple[int, bytes], pid: int) -> bytes:
    body = b"".join(struct.pack("<HH", tag, len(value)) + value for tag, value in fields)
    header = struct.pack(
        "<HBBHHIIIIQII", 0x5454, 1, kind, 40 + len(body), 0, pid, 1, pid, 1, 1_750_000_000_000_000_000, 0, 1
    )
    return header + body


@trio.testing.trio_test
async def test_records_from_a_workload_reach_the_controller_in_a_batch(tmp_path: Path) -> None:
    """Real clock: a shim connection, the batch age flush and the link, end to end."""
    connector = MemoryConnector()
    agent = Agent(config(tmp_path), connector=connector)
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.run)
        with trio.fail_after(10):
            session = await connector.controller(CTL_A).wait_session()
            session.push(welcome())
            client = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            with client:
                await client.connect(str(tmp_path / "a.sock"))
                await client.send(_record(1, (11, descriptor.encode(SHOP).encode()), pid=500))
                await client.send(
                    _record(3, (5, struct.pack("<HH4s8x", 2, 0x5000, bytes([127, 0, 0, 1]))), pid=500)
                )
                await session.wait_for("batch")
                await eventually(lambda: agent.state.workloads.active == 1, "the workload to be active")
        batch = session.batches[0]
        assert [w.id for w in batch.workloads] == ["w-shop"]
        assert [e.kind for e in batch.events] == [
            common_pb2.EVENT_KIND_PROCESS_START,
            common_pb2.EVENT_KIND_CONNECT,
        ]
        assert batch.events[1].socket.address.port == 0x0050  # 80, in network order on the wire
        nursery.cancel_scope.cancel()


@trio.testing.trio_test
async def test_an_outage_with_a_full_spool_keeps_every_event_batch(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    connector = MemoryConnector()
    connector.refuse(CTL_A)
    agent = Agent(config(tmp_path, spool_batches=100), connector=connector)
    spool, counters = agent.state.spool, agent.state.spool.counters
    for pid in range(101):  # batch 1 is pushed out: its event's loss waits to be reported
        add_batch(agent, pid)
    assert (counters.dropped_batches, counters.unsent_dropped) == (1, 1)
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.run)
        await trio.sleep(10)  # ten virtual seconds of outage without new events
        assert connector.controller(CTL_A).attempts > 1, "the link kept trying"
        assert len(spool) == 100
        assert pids(list(spool.batches())) == list(range(1, 101)), "every event batch is still there"
        assert counters.dropped_batches == 1
        assert (counters.dropped, counters.unsent_dropped) == (1, 1), "the loss is still pending"
        nursery.cancel_scope.cancel()


@trio.testing.trio_test
async def test_a_welcome_beyond_what_this_agent_sent_renumbers_instead_of_acknowledging(
    tmp_path: Path, clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    connector = MemoryConnector()
    controller = connector.controller(CTL_A)
    agent = Agent(config(tmp_path), connector=connector)
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.run)
        with trio.fail_after(DEADLINE_S):
            first = await controller.wait_session()
            await send_three_acknowledge_one(agent, first)
            first.end("controller restarted")

            # A controller that recorded 100 batches of this node id (a clone shares it).
            second = await controller.wait_session(2)
            second.push(welcome(last_seq=100))
            await second.wait_for("batch", 2)
            add_batch(agent, pid=4)
            await second.wait_for("batch", 3)
        assert [b.seq for b in second.batches] == [101, 102, 103]
        assert pids(second.batches) == [2, 3, 4], "the unacknowledged batches were not discarded"
        assert agent.state.last_acked_seq == 100
        warnings = [r.getMessage() for r in caplog.records if "renumbering" in r.getMessage()]
        assert len(warnings) == 1
        assert re.search(r"\b100\b.* 3\b", warnings[0]), warnings[0]
        nursery.cancel_scope.cancel()


@trio.testing.trio_test
async def test_hello_carries_an_instance_id_per_agent_and_the_boot_id(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    connector = MemoryConnector()
    controller = connector.controller(CTL_A)
    hellos: list[agent_pb2.Hello] = []
    for _ in range(2):  # two agent instances with one node identity
        agent = Agent(config(tmp_path), connector=connector)
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.run)
            with trio.fail_after(DEADLINE_S):
                for _ in range(2):  # two streams of one instance
                    session = await controller.wait_session(len(hellos) + 1)
                    await session.wait_for("hello")
                    hellos.append(session.hello)
                    session.end()
            nursery.cancel_scope.cancel()
    ids = [h.instance_id for h in hellos]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids), ids
    assert ids[0] == ids[1], "an instance keeps its id across reconnects"
    assert ids[2] == ids[3]
    assert ids[0] != ids[2], "another agent instance has another id"
    assert len({h.node_id for h in hellos}) == 1
    boot = (await trio.Path("/proc/sys/kernel/random/boot_id").read_text()).strip()
    assert {h.boot_id for h in hellos} == {boot}
    assert identity.boot_id(tmp_path / "no-such-file") == ""


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1:7443", "127.9.0.1:1", "localhost:7443", "[::1]:7443"],
)
def test_plaintext_to_a_loopback_controller_is_allowed(tmp_path: Path, address: str) -> None:
    config(tmp_path, controllers=[address]).validate()


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("10.0.0.5:7443", "not a loopback address"),
        ("controller.example.com:7443", "not a loopback address"),
        ("[2001:db8::1]:7443", "not a loopback address"),
        ("0.0.0.0:7443", "not a loopback address"),
        ("127.0.0.1", "is not HOST:PORT"),
        ("127.0.0.1:99999", "is not HOST:PORT"),
        (":7443", "is not HOST:PORT"),
        ("ctl-a", "is not HOST:PORT"),
    ],
)
def test_plaintext_to_a_controller_off_this_host_or_a_bad_address_is_refused(
    tmp_path: Path, address: str, message: str
) -> None:
    settings = config(tmp_path, controllers=["127.0.0.1:7443", address])
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        settings.validate()
    assert address in str(info.value)


@trio.testing.trio_test
async def test_counters_past_the_uint64_range_reach_the_controller_saturated(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    connector = MemoryConnector()
    agent = Agent(config(tmp_path), connector=connector)
    counters = agent.state.spool.counters
    for _ in range(3):
        counters.count_dropped(2**63)
        counters.count_malformed(2**63)
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.run)
        with trio.fail_after(DEADLINE_S):
            session = await connector.controller(CTL_A).wait_session()
            session.push(welcome(heartbeat_ms=500))
            await session.wait_for("heartbeat")
            await session.wait_for("batch")
        beat = session.heartbeats[0]
        assert (beat.dropped_records, beat.malformed_records) == (U64_MAX, U64_MAX)
        batch = session.batches[0]
        assert (batch.dropped_records, batch.malformed_records) == (U64_MAX, U64_MAX)
        nursery.cancel_scope.cancel()


@pytest.fixture
def sigterm_caught() -> Iterator[list[int]]:
    """While the test runs, a SIGTERM nobody else handles is recorded instead of ending pytest
    (trio redelivers a signal its receiver did not consume when the receiver closes)."""
    caught: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: caught.append(signum))
    try:
        yield caught
    finally:
        signal.signal(signal.SIGTERM, previous)


@trio.testing.trio_test
async def test_after_a_stop_request_a_lost_link_is_not_retried(
    tmp_path: Path,
    clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    sigterm_caught: list[int],
) -> None:
    connector = MemoryConnector()
    controller = connector.controller(CTL_A)
    agent = Agent(config(tmp_path), connector=connector)
    stopped = trio.Event()

    async def run_until_stopped(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await agent.run(task_status=task_status)
        stopped.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(run_until_stopped)
        with trio.fail_after(DEADLINE_S):
            session = await controller.wait_session()
            session.push(welcome())
            add_batch(agent, pid=1)
            await session.wait_for("batch")  # never acknowledged: the agent gives it a grace period
            os.kill(os.getpid(), signal.SIGTERM)
            await eventually(
                lambda: any("agent stopping" in r.getMessage() for r in caplog.records),
                "the stop request to be seen",
            )
            start = trio.current_time()
            session.end("controller restarted")
            await stopped.wait()
        assert trio.current_time() - start <= STOP_GRACE_S + 0.1
    assert controller.attempts == 1, "no new stream after the stop request"
    assert not [r for r in caplog.records if "retrying" in r.getMessage()]
    assert sigterm_caught == [], "the agent handled the signal"


def fence(revision: int, networks: Sequence[str]) -> agent_pb2.ConnectResponse:
    """A policy update whose default policy blocks `networks`."""
    return agent_pb2.ConnectResponse(
        policy_update=agent_pb2.PolicyUpdate(
            revision=revision,
            policies=[policy_pb2.Policy(name="Fence")],
            default_policy="Fence",
            enforcement=[agent_pb2.PolicyEnforcement(policy="Fence", networks=networks)],
        )
    )


@trio.testing.trio_test
async def test_a_policy_update_reaches_the_firewall_before_it_is_acknowledged(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    """The blocked networks are applied, then the revision acknowledged; a refusal is acknowledged
    with the reason, and heartbeats say what is enforced."""
    firewall = MemoryFirewall()
    connector = MemoryConnector()
    agent = Agent(config(tmp_path), connector=connector, firewall=firewall)
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.run)
        with trio.fail_after(DEADLINE_S):
            session = await connector.controller(CTL_A).wait_session()
            session.push(welcome(heartbeat_ms=1000))
            session.push(fence(11, ["192.0.2.0/24"]))
            await session.wait_for("policy_applied")
            assert firewall.current() == ["192.0.2.0/24"]
            await eventually(
                lambda: any(h.enforcement.policy_revision == 11 for h in session.heartbeats),
                "a heartbeat showing revision 11 enforced",
            )
            state = session.heartbeats[-1].enforcement
            assert (state.mode, state.blocked_networks, state.policy_revision) == (
                common_pb2.ENFORCEMENT_MODE_ACTIVE,
                1,
                11,
            )
            firewall.fail_with = "table busy"
            session.push(fence(12, ["198.51.100.0/24"]))
            await session.wait_for("policy_applied", 2)
        assert [(p.revision, "table busy" in p.error) for p in session.policies_applied] == [
            (11, False),
            (12, True),
        ]
        assert session.policies_applied[0].enforcement.blocked_networks == 1
        assert session.policies_applied[1].enforcement.mode == common_pb2.ENFORCEMENT_MODE_FAILED
        assert agent.state.applied_revision == 11, "a revision the firewall refused is not applied"
        nursery.cancel_scope.cancel()


@trio.testing.trio_test
async def test_the_firewall_is_reconciled_from_the_last_run_before_any_controller(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    """A restarted agent re-applies what the previous one enforced, with no controller reachable."""
    connector = MemoryConnector()
    first = Agent(config(tmp_path), connector=connector, firewall=MemoryFirewall())
    async with trio.open_nursery() as nursery:
        await nursery.start(first.run)
        with trio.fail_after(DEADLINE_S):
            session = await connector.controller(CTL_A).wait_session()
            session.push(welcome())
            session.push(fence(3, ["203.0.113.0/24"]))
            await session.wait_for("policy_applied")
        nursery.cancel_scope.cancel()
    first.state.spool.close()
    connector.refuse(CTL_A)
    fresh = MemoryFirewall()
    second = Agent(config(tmp_path), connector=connector, firewall=fresh)
    async with trio.open_nursery() as nursery:
        await nursery.start(second.run)
        assert fresh.current() == ["203.0.113.0/24"]
        nursery.cancel_scope.cancel()
    second.state.spool.close()


def test_enforcement_on_refuses_to_start_where_it_cannot_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """enforcement = on with no usable firewall is a configuration error naming the reason."""
    monkeypatch.setattr(daemon, "open_firewall", lambda: (None, "no libnftables here"))
    with pytest.raises(ConfigError, match="no libnftables here"):
        Agent(config(tmp_path, enforcement="on"))
    agent = Agent(config(tmp_path, enforcement="auto"))
    assert agent.enforcer.state.mode == common_pb2.ENFORCEMENT_MODE_UNAVAILABLE
    assert "no libnftables here" in agent.enforcer.state.detail
    agent.state.spool.close()


@trio.testing.trio_test
async def test_host_state_is_sent_at_each_connect_and_when_it_changes(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    """The latest snapshot goes out after every welcome; a change goes out while connected."""
    source = MemoryHostState(agent_pb2.NodeState(full=True, kernel="6.1.0"))
    connector = MemoryConnector()
    agent = Agent(config(tmp_path), connector=connector, host_state=source)
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.run)
        with trio.fail_after(DEADLINE_S):
            session = await connector.controller(CTL_A).wait_session()
            session.push(welcome())
            (first,) = await session.wait_for("node_state")
            assert first.node_state.kernel == "6.1.0"
            changed = agent_pb2.NodeState(full=True, kernel="6.1.0", sysctls={"net.ipv4.ip_forward": "1"})
            source.set(changed)
            states = await session.wait_for("node_state", 2)
            assert states[1].node_state.sysctls["net.ipv4.ip_forward"] == "1"
            session.end()
            again = await connector.controller(CTL_A).wait_session(2)
            again.push(welcome())
            (resent,) = await again.wait_for("node_state")
            assert resent.node_state.sysctls["net.ipv4.ip_forward"] == "1"
        nursery.cancel_scope.cancel()


@trio.testing.trio_test
async def test_hello_carries_the_addresses_of_the_latest_host_snapshot(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    """Other hosts' addresses for this node go in the Hello: neither loopback nor link-local."""
    interfaces = [
        agent_pb2.InterfaceState(name="lo", addresses=["127.0.0.1/8", "::1/128"]),
        agent_pb2.InterfaceState(name="eth0", addresses=["10.77.0.101/24", "fe80::1/64", "2001:db8::5/64"]),
        agent_pb2.InterfaceState(name="eth1", addresses=["10.77.0.101/24", "192.0.2.7/32"]),
    ]
    source = MemoryHostState(agent_pb2.NodeState(full=True, interfaces=interfaces))
    connector = MemoryConnector()
    agent = Agent(config(tmp_path), connector=connector, host_state=source)
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.run)
        with trio.fail_after(DEADLINE_S):
            session = await connector.controller(CTL_A).wait_session()
            await session.wait_for("hello")
        nursery.cancel_scope.cancel()
    assert list(session.hello.addresses) == ["10.77.0.101", "2001:db8::5", "192.0.2.7"]
    assert identity.node_addresses(None) == []
