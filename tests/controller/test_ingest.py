"""Recording agent batches exactly once (ingest.apply_batch), against the in-memory store."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import pytest

from telltale.controller.errors import Unavailable
from telltale.controller.ingest import MAX_ATTEMPTS, UINT64_MAX, BatchOutcome, apply_batch
from telltale.controller.memstore import MemoryStore
from telltale.controller.store import MAX_BATCH_ALERTS, Conflict, Versioned
from telltale.engine.builtin import DEFAULT_POLICY, load_builtin_policies
from telltale.engine.evaluate import PolicySet, fingerprint
from telltale.v1 import agent_pb2, alert_pb2, common_pb2, inventory_pb2

NS = 1_000_000_000
NOW = 1_800_000_000 * NS
POLICIES = PolicySet(load_builtin_policies(), DEFAULT_POLICY, {})
SHOP = common_pb2.Workload(id="w-shop", application="shop", component="api")
SHELL_FP = fingerprint("process.shell_launched", "shop", "api", "/bin/sh")


def shell(workload_id: str = SHOP.id, *, count: int = 1, path: str = "/bin/sh") -> common_pb2.Event:
    """An event the Standard policy turns into a shell_launched finding."""
    return common_pb2.Event(
        kind=common_pb2.EVENT_KIND_EXEC,
        workload_id=workload_id,
        count=count,
        process=common_pb2.ProcessInfo(pid=10, exe="/usr/bin/python3", euid=1000),
        exec=common_pb2.ExecDetail(path=path),
    )


def harmless(workload_id: str = SHOP.id) -> common_pb2.Event:
    """An event that raises no finding under Standard."""
    return shell(workload_id, path="/usr/bin/true")


def batch(
    seq: int,
    *events: common_pb2.Event,
    workloads: Sequence[common_pb2.Workload] = (SHOP,),
    dropped: int = 0,
    malformed: int = 0,
) -> agent_pb2.EventBatch:
    return agent_pb2.EventBatch(
        seq=seq, workloads=workloads, events=events, dropped_records=dropped, malformed_records=malformed
    )


async def registered(
    store: MemoryStore, node_id: str = "node-a", **fields: int
) -> Versioned[inventory_pb2.Node]:
    """The node as a stream holds it after registering (what agent_service does first)."""
    node = inventory_pb2.Node(node_id=node_id, **fields)
    return Versioned(node, await store.put_node(node, 0))


async def shell_alert(store: MemoryStore) -> Versioned[alert_pb2.Alert]:
    stored = await store.get_alert(SHELL_FP)
    assert stored is not None, "the shell alert was recorded"
    return stored


class ConflictOnce(MemoryStore):
    """A store whose first commit_batch loses a race: it raises Conflict and writes nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.commits = 0

    async def commit_batch(
        self,
        node: inventory_pb2.Node,
        expected_node_revision: int,
        alerts: Sequence[tuple[alert_pb2.Alert, int]],
    ) -> int:
        self.commits += 1
        if self.commits == 1:
            raise Conflict("lost a race (simulated)")
        return await super().commit_batch(node, expected_node_revision, alerts)


class InterloperOnce(MemoryStore):
    """A store where `interloper` writes just before the first commit, which then really conflicts."""

    def __init__(self) -> None:
        super().__init__()
        self.commits = 0
        self.interloper: Callable[[], Awaitable[object]] | None = None

    async def commit_batch(
        self,
        node: inventory_pb2.Node,
        expected_node_revision: int,
        alerts: Sequence[tuple[alert_pb2.Alert, int]],
    ) -> int:
        self.commits += 1
        interloper, self.interloper = self.interloper, None
        if interloper is not None:
            await interloper()
        return await super().commit_batch(node, expected_node_revision, alerts)


def test_a_batch_applied_twice_is_recorded_once() -> None:
    """Re-applying a batch with the same seq is a duplicate and changes no alert and no node."""

    async def body() -> None:
        store = MemoryStore()
        node = await registered(store)
        first = await apply_batch(store, batch(1, shell(), shell(count=4)), node, POLICIES, NOW)
        assert (first.duplicate, first.events, first.findings, first.alerts_written) == (False, 2, 2, 1)
        assert first.node.value.last_seq == 1
        recorded = await shell_alert(store)
        assert recorded.value.occurrences == 5
        revision = store.revision

        again = await apply_batch(store, batch(1, shell(), shell(count=4)), first.node, POLICIES, NOW + NS)
        assert again.duplicate
        assert again.node == first.node
        assert await shell_alert(store) == recorded
        assert store.revision == revision

    asyncio.run(body())


def test_a_batch_already_recorded_through_another_stream_is_a_duplicate() -> None:
    """A stream holding a stale node record (the batch went in elsewhere) detects the duplicate."""

    async def body() -> None:
        store = MemoryStore()
        stale = await registered(store)
        await apply_batch(store, batch(1, shell()), stale, POLICIES, NOW)
        recorded = await shell_alert(store)

        outcome = await apply_batch(store, batch(1, shell()), stale, POLICIES, NOW + NS)
        assert outcome.duplicate
        assert outcome.node.value.last_seq == 1
        assert outcome.node == await store.get_node("node-a")
        assert await shell_alert(store) == recorded

    asyncio.run(body())


def test_a_commit_that_loses_a_race_is_retried_and_counted_once() -> None:
    """After a Conflict the batch is evaluated into a fresh commit: recorded once, not twice."""

    async def body() -> None:
        store = ConflictOnce()
        node = await registered(store)
        outcome = await apply_batch(store, batch(1, shell(count=3)), node, POLICIES, NOW)
        assert store.commits == 2
        assert (outcome.duplicate, outcome.alerts_written) == (False, 1)
        assert (await shell_alert(store)).value.occurrences == 3
        stored = await store.get_node("node-a")
        assert stored is not None
        assert stored.value.last_seq == 1
        assert outcome.node == stored

    asyncio.run(body())


def test_a_retry_merges_onto_what_the_winner_wrote() -> None:
    """When another node's batch wins the race for the same alert, the retry adds to it, losing nothing."""

    async def body() -> None:
        store = InterloperOnce()
        node_a = await registered(store, "node-a")
        node_b = await registered(store, "node-b")

        async def node_b_wins() -> None:
            await apply_batch(store, batch(1, shell(count=2)), node_b, POLICIES, NOW)

        store.interloper = node_b_wins
        outcome = await apply_batch(store, batch(7, shell(count=5)), node_a, POLICIES, NOW + NS)
        assert store.commits == 3  # node-a's lost commit, node-b's, node-a's retry
        assert (outcome.duplicate, outcome.node.value.last_seq) == (False, 7)
        recorded = (await shell_alert(store)).value
        assert recorded.occurrences == 7
        assert list(recorded.nodes) == ["node-a", "node-b"]

    asyncio.run(body())


def test_a_batch_that_keeps_losing_is_not_recorded_at_all(monkeypatch: pytest.MonkeyPatch) -> None:
    """After MAX_ATTEMPTS lost races apply_batch raises Unavailable and nothing of the batch is stored."""

    class AlwaysConflict(MemoryStore):
        async def commit_batch(
            self,
            node: inventory_pb2.Node,
            expected_node_revision: int,
            alerts: Sequence[tuple[alert_pb2.Alert, int]],
        ) -> int:
            raise Conflict("lost a race (simulated)")

    monkeypatch.setattr("telltale.controller.ingest.random.uniform", lambda low, high: 0.0)

    async def body() -> None:
        store = AlwaysConflict()
        node = await registered(store)
        with pytest.raises(Unavailable, match=f"{MAX_ATTEMPTS} races"):
            await apply_batch(store, batch(1, shell()), node, POLICIES, NOW)
        assert await store.get_alert(SHELL_FP) is None
        assert await store.get_node("node-a") == node

    asyncio.run(body())


def test_sequence_gaps_are_counted_on_the_node() -> None:
    """Batches missing between two recorded ones are added to the node's sequence_gaps."""

    async def body() -> None:
        store = MemoryStore()
        node = await registered(store)
        outcomes: list[BatchOutcome] = []
        for seq in (1, 2, 5, 6, 10):
            outcomes.append(await apply_batch(store, batch(seq, harmless()), node, POLICIES, NOW))
            node = outcomes[-1].node
        assert [o.node.value.sequence_gaps for o in outcomes] == [0, 0, 2, 2, 5]
        stored = await store.get_node("node-a")
        assert stored is not None
        assert (stored.value.last_seq, stored.value.sequence_gaps) == (10, 5)

    asyncio.run(body())


def test_loss_counters_saturate_instead_of_overflowing() -> None:
    """Dropped, malformed and gap counters stop at 2**64-1 rather than failing the batch."""

    async def body() -> None:
        store = MemoryStore()
        node = await registered(
            store, last_seq=1, dropped_records=UINT64_MAX - 10, malformed_records=UINT64_MAX, sequence_gaps=5
        )
        outcome = await apply_batch(
            store, batch(UINT64_MAX, shell(), dropped=100, malformed=UINT64_MAX), node, POLICIES, NOW
        )
        stored = await store.get_node("node-a")
        assert stored is not None
        assert outcome.node == stored
        counters = stored.value
        assert (counters.dropped_records, counters.malformed_records, counters.sequence_gaps) == (
            UINT64_MAX,
            UINT64_MAX,
            UINT64_MAX,
        )
        assert counters.last_seq == UINT64_MAX
        assert (await shell_alert(store)).value.occurrences == 1

    asyncio.run(body())


def test_loss_counters_add_up_per_batch() -> None:
    """Each batch's dropped and malformed counts are added to the node's totals."""

    async def body() -> None:
        store = MemoryStore()
        node = await registered(store)
        node = (await apply_batch(store, batch(1, dropped=3, malformed=1), node, POLICIES, NOW)).node
        node = (await apply_batch(store, batch(2, dropped=4), node, POLICIES, NOW)).node
        assert (node.value.dropped_records, node.value.malformed_records) == (7, 1)
        assert await store.get_node("node-a") == node

    asyncio.run(body())


def test_two_nodes_reporting_one_behaviour_make_one_alert() -> None:
    """The same behaviour on two nodes is one alert naming both nodes, with the counts summed."""

    async def body() -> None:
        store = MemoryStore()
        node_a, node_b = await registered(store, "node-a"), await registered(store, "node-b")
        await apply_batch(store, batch(1, shell(count=3)), node_a, POLICIES, NOW)
        await apply_batch(store, batch(1, shell(count=4)), node_b, POLICIES, NOW + NS)
        alerts, _ = await store.list_alerts()
        assert [a.value.fingerprint for a in alerts] == [SHELL_FP]
        assert alerts[0].value.occurrences == 7
        assert list(alerts[0].value.nodes) == ["node-a", "node-b"]

    asyncio.run(body())


def test_two_nodes_recording_concurrently_lose_nothing() -> None:
    """Concurrent batches from many nodes for one alert race, retry, and every occurrence is counted once."""

    async def body() -> None:
        store = InterloperOnce()  # with no interloper: counts commits
        nodes = [await registered(store, f"node-{i}") for i in range(4)]
        outcomes = await asyncio.gather(
            *(apply_batch(store, batch(1, shell(count=i + 1)), n, POLICIES, NOW) for i, n in enumerate(nodes))
        )
        assert store.commits > len(nodes), "the batches raced for the alert"
        assert not any(o.duplicate for o in outcomes)
        recorded = (await shell_alert(store)).value
        assert recorded.occurrences == 1 + 2 + 3 + 4
        assert list(recorded.nodes) == [f"node-{i}" for i in range(4)]

    asyncio.run(body())


def test_events_of_unknown_workloads_belong_to_application_unknown() -> None:
    """An event whose workload the batch does not describe is attributed to application "unknown"."""

    async def body() -> None:
        store = MemoryStore()
        node = await registered(store)
        await apply_batch(store, batch(1, shell("w-ghost"), workloads=()), node, POLICIES, NOW)
        alerts, _ = await store.list_alerts()
        assert [(a.value.application, a.value.component) for a in alerts] == [("unknown", "")]
        assert alerts[0].value.fingerprint == fingerprint("process.shell_launched", "unknown", "", "/bin/sh")
        assert alerts[0].value.sample_workload.id == "w-ghost"

    asyncio.run(body())


def test_the_sample_of_an_unknown_workload_names_its_node() -> None:
    """An alert's sample workload names the node it ran on, described by the batch or not."""

    async def body() -> None:
        store = MemoryStore()
        node = await registered(store)
        await apply_batch(store, batch(1, shell("w-ghost"), workloads=()), node, POLICIES, NOW)
        await apply_batch(store, batch(2, harmless(), shell(), workloads=[SHOP]), node, POLICIES, NOW)
        alerts, _ = await store.list_alerts()
        by_app = {a.value.application: a.value.sample_workload.node_id for a in alerts}
        assert by_app["shop"] == "node-a"  # a described workload is stamped with its node
        assert by_app["unknown"] == "node-a"

    asyncio.run(body())


def test_a_batch_without_findings_still_records_its_sequence() -> None:
    """A batch that raises nothing advances the node's sequence, so a re-send is still a duplicate."""

    async def body() -> None:
        store = MemoryStore()
        node = await registered(store)
        outcome = await apply_batch(store, batch(1, harmless()), node, POLICIES, NOW)
        assert (outcome.findings, outcome.alerts_written, outcome.node.value.last_seq) == (0, 0, 1)
        assert (await store.list_alerts())[0] == []
        assert (await apply_batch(store, batch(1, shell()), outcome.node, POLICIES, NOW)).duplicate

    asyncio.run(body())


def test_a_batch_larger_than_one_transaction_is_recorded_whole() -> None:
    """More distinct alerts than one commit holds are written in chunks, the sequence with the last."""

    async def body() -> None:
        store = MemoryStore()
        node = await registered(store)
        count = MAX_BATCH_ALERTS + 20
        workloads = [common_pb2.Workload(id=f"w-{i}", application=f"app-{i}") for i in range(count)]
        events = [shell(w.id) for w in workloads]
        outcome = await apply_batch(store, batch(1, *events, workloads=workloads), node, POLICIES, NOW)
        assert (outcome.alerts_written, outcome.node.value.last_seq) == (count, 1)
        alerts, _ = await store.list_alerts()
        assert sorted(a.value.application for a in alerts) == sorted(w.application for w in workloads)
        assert all(a.value.occurrences == 1 for a in alerts)

    asyncio.run(body())
