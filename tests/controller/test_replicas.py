"""Replicas in-process: coalesced batch writes, the singleton duties, and liveness in the store."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc
from storekit import Harness, Run, closed, take
from test_agent_stream import _next, _serve, _stream
from test_ingest import NOW, NS, POLICIES, SHELL_FP, batch, registered, shell

from telltale.controller.agent_service import AgentService
from telltale.controller.coalescer import Coalescer, NodeRecord
from telltale.controller.duties import Retention, SingletonDuties, retention_victims
from telltale.controller.ingest import BatchStep, Evaluated, commit_batches, evaluate
from telltale.controller.memstore import MemoryStore
from telltale.controller.policies import PolicyView
from telltale.controller.store import MAX_BATCH_ALERTS, Versioned
from telltale.engine import builtin
from telltale.engine import policy as policy_model
from telltale.v1 import agent_pb2, agent_pb2_grpc, alert_pb2, common_pb2, inventory_pb2

DAY_NS = 86_400 * NS


class CountingStore(MemoryStore):
    """A MemoryStore whose commits take a little while (as etcd's do) and are counted."""

    def __init__(self, commit_s: float = 0.002) -> None:
        super().__init__()
        self.commits = 0
        self.commit_s = commit_s

    async def commit_batch(
        self,
        node: inventory_pb2.Node,
        expected_node_revision: int,
        alerts: Sequence[tuple[alert_pb2.Alert, int]],
    ) -> int:
        self.commits += 1
        await asyncio.sleep(self.commit_s)
        return await super().commit_batch(node, expected_node_revision, alerts)


# -- coalescing ------------------------------------------------------------------------------
def test_batches_arriving_back_to_back_share_transactions_and_count_exactly() -> None:
    """200 batches submitted at once make a handful of transactions; every occurrence counts once."""

    async def body() -> None:
        store = CountingStore()
        record = NodeRecord(await registered(store))
        acked: list[int] = []

        async def committed(item: Evaluated, step: BatchStep) -> None:
            assert not step.duplicate
            acked.append(item.batch.seq)

        coalescer = Coalescer(store, record, committed)
        writer = asyncio.create_task(coalescer.run())
        try:
            for seq in range(1, 201):
                await coalescer.submit(evaluate(batch(seq, shell(count=2)), "node-a", POLICIES, NOW + seq))
            await coalescer.drain()
        finally:
            writer.cancel()
        assert acked == list(range(1, 201)), "every batch acknowledged once, in order"
        assert store.commits <= 10, f"{store.commits} transactions for 200 batches"
        assert coalescer.transactions == store.commits
        alert = await store.get_alert(SHELL_FP)
        assert alert is not None
        assert alert.value.occurrences == 400
        node = await store.get_node("node-a")
        assert node is not None
        assert (node.value.last_seq, node.value.sequence_gaps) == (200, 0)

    asyncio.run(body())


def test_a_batch_is_acknowledged_only_after_its_transaction_commits() -> None:
    """While a commit is in flight, nothing of the batches queued behind it is acknowledged."""

    async def body() -> None:
        store = CountingStore(commit_s=0.05)
        record = NodeRecord(await registered(store))
        acked: list[int] = []

        async def committed(item: Evaluated, step: BatchStep) -> None:
            node = await store.get_node("node-a")
            assert node is not None
            assert node.value.last_seq >= item.batch.seq, "acknowledged before it was recorded"
            acked.append(item.batch.seq)

        coalescer = Coalescer(store, record, committed)
        writer = asyncio.create_task(coalescer.run())
        try:
            await coalescer.submit(evaluate(batch(1, shell()), "node-a", POLICIES, NOW))
            await asyncio.sleep(0.01)  # the first commit is in flight now
            for seq in (2, 3, 4):
                await coalescer.submit(evaluate(batch(seq, shell()), "node-a", POLICIES, NOW))
            assert acked == []
            await coalescer.drain()
        finally:
            writer.cancel()
        assert acked == [1, 2, 3, 4]
        assert store.commits == 2, "the three queued batches went in one transaction"

    asyncio.run(body())


def test_coalescing_never_puts_more_alerts_in_a_transaction_than_it_holds() -> None:
    """Batches of distinct alerts are split so that no transaction exceeds MAX_BATCH_ALERTS."""

    async def body() -> None:
        store = CountingStore()
        record = NodeRecord(await registered(store))
        sizes: list[int] = []
        commit = store.commit_batch

        async def counting(
            node: inventory_pb2.Node, expected: int, alerts: Sequence[tuple[alert_pb2.Alert, int]]
        ) -> int:
            sizes.append(len(alerts))
            return await commit(node, expected, alerts)

        store.commit_batch = counting  # type: ignore[method-assign]

        async def committed(item: Evaluated, step: BatchStep) -> None:
            pass

        coalescer = Coalescer(store, record, committed)
        writer = asyncio.create_task(coalescer.run())
        try:
            for seq in range(1, 31):  # 30 batches of 10 distinct alerts each (one per application)
                apps = [common_pb2.Workload(id=f"w{seq}-{i}", application=f"app{seq}-{i}") for i in range(10)]
                events = [shell(w.id) for w in apps]
                item = evaluate(batch(seq, *events, workloads=apps), "node-a", POLICIES, NOW)
                await coalescer.submit(item)
            await coalescer.drain()
        finally:
            writer.cancel()
        assert max(sizes) <= MAX_BATCH_ALERTS
        assert sum(sizes) == 300
        alerts, _ = await store.list_alerts()
        assert len(alerts) == 300

    asyncio.run(body())


def test_a_storm_on_one_agent_stream_is_coalesced_and_acknowledged_in_order() -> None:
    """Over a real gRPC stream, 100 batches sent back-to-back: acks in order, far fewer commits."""

    async def body() -> None:
        store = CountingStore()
        server, port, _ = await _serve(store)
        requests: asyncio.Queue[agent_pb2.ConnectRequest | None] = asyncio.Queue()
        try:
            responses = _stream(port, requests)
            await requests.put(agent_pb2.ConnectRequest(hello=agent_pb2.Hello(node_id="node-a")))
            await _next(responses, "welcome")
            commits_before = store.commits
            for seq in range(1, 101):
                await requests.put(agent_pb2.ConnectRequest(batch=batch(seq, shell(count=3))))
            acks = [(await _next(responses, "batch_ack")).batch_ack.seq for _ in range(100)]
            assert acks == list(range(1, 101))
            commits = store.commits - commits_before
            assert commits <= 50, f"{commits} transactions for 100 batches"
            alert = await store.get_alert(SHELL_FP)
            assert alert is not None
            assert alert.value.occurrences == 300
            print(f"\n100 batches back-to-back: {commits} transactions")
        finally:
            await requests.put(None)
            await server.stop(None)

    asyncio.run(body())


# -- node liveness and expiry ----------------------------------------------------------------
def _online(node_id: str, controller_id: str = "ctl-a") -> inventory_pb2.Node:
    return inventory_pb2.Node(
        node_id=node_id, controller_id=controller_id, liveness=inventory_pb2.NODE_LIVENESS_ONLINE
    )


async def _no_seed() -> list[str]:
    return []


def test_the_leader_marks_offline_exactly_the_online_nodes_without_liveness(run: Run) -> None:
    """Nodes held by a live replica stay online; a node whose replica died goes offline once."""

    async def body(h: Harness) -> None:
        store = h.store
        await store.put_node(_online("held"), 0)
        await store.put_node(_online("orphan"), 0)
        await store.put_node(
            inventory_pb2.Node(node_id="gone", liveness=inventory_pb2.NODE_LIVENESS_OFFLINE), 0
        )
        await store.put_node_live("held", "ctl-a", 0)
        duties = SingletonDuties(store, _no_seed)
        assert await duties.expire_nodes() == ["orphan"]
        assert await duties.expire_nodes() == []
        states = {n.node_id: n.liveness for n in await store.list_nodes()}
        assert states == {
            "held": inventory_pb2.NODE_LIVENESS_ONLINE,
            "orphan": inventory_pb2.NODE_LIVENESS_OFFLINE,
            "gone": inventory_pb2.NODE_LIVENESS_OFFLINE,
        }
        assert await store.live_nodes() == {"held": "ctl-a"}

    run(body)


def test_a_reconnect_wins_over_a_concurrent_expiry(run: Run) -> None:
    """expire_node writes nothing when the record moved on or a liveness key appeared meanwhile."""

    async def body(h: Harness) -> None:
        store = h.store
        revision = await store.put_node(_online("n1"), 0)
        offline = inventory_pb2.Node(node_id="n1", liveness=inventory_pb2.NODE_LIVENESS_OFFLINE)
        await store.put_node_live("n1", "ctl-b", 0)  # reconnected elsewhere: liveness first
        assert not await store.expire_node(offline, revision)
        await store.delete_node_live("n1", "ctl-b")
        newer = await store.put_node(_online("n1", "ctl-b"), revision)  # ... then the record
        assert not await store.expire_node(offline, revision)
        assert await store.expire_node(offline, newer)

    run(body)


def test_a_liveness_key_is_withdrawn_only_by_its_holder(run: Run) -> None:
    """A stale stream ending on another replica leaves the newer holder's key alone."""

    async def body(h: Harness) -> None:
        store = h.store
        await store.put_node_live("n1", "ctl-a", 0)
        await store.put_node_live("n1", "ctl-b", 0)
        await store.delete_node_live("n1", "ctl-a")
        assert await store.live_nodes() == {"n1": "ctl-b"}
        await store.delete_node_live("n1", "ctl-b")
        assert await store.live_nodes() == {}

    run(body)


def test_liveness_deletions_are_watched(run: Run) -> None:
    """watch_node_live reports a deleted liveness key by node id, from when it started."""

    async def body(h: Harness) -> None:
        store = h.store
        await store.put_node_live("before", "ctl-a", 0)
        await store.delete_node_live("before", "ctl-a")
        watch = aiter(store.watch_node_live())
        first = asyncio.ensure_future(anext(watch))
        await asyncio.sleep(0.2)  # let the watch start (etcd answers its creation)
        await store.put_node_live("n1", "ctl-a", 0)
        await store.delete_node_live("n1", "ctl-a")
        try:
            assert await asyncio.wait_for(first, 5) == "n1"
        finally:
            await closed(watch)

    run(body)


def test_the_leader_expires_a_node_as_soon_as_its_replica_lease_goes() -> None:
    """A replica's lease revoked (it died): the running duties mark its node offline at once."""

    async def body() -> None:
        store = MemoryStore()
        await store.put_node_live("n1", "ctl-a", lease=7)
        await store.put_node(_online("n1"), 0)
        duties = SingletonDuties(store, _no_seed, node_sweep_s=3600, retention=Retention(interval_s=3600))
        term = asyncio.create_task(duties.run())
        try:
            await asyncio.sleep(0.05)
            node = await store.get_node("n1")
            assert node is not None
            assert node.value.liveness == inventory_pb2.NODE_LIVENESS_ONLINE
            await store.revoke_lease(7)
            async with asyncio.timeout(5):
                while node.value.liveness != inventory_pb2.NODE_LIVENESS_OFFLINE:
                    await asyncio.sleep(0.01)
                    node = await store.get_node("n1")
                    assert node is not None
        finally:
            term.cancel()

    asyncio.run(body())


# -- alert retention -------------------------------------------------------------------------
def _alert(fp: str, state: int, last_seen_ns: int) -> Versioned[alert_pb2.Alert]:
    alert = alert_pb2.Alert(fingerprint=fp, state=state)  # type: ignore[arg-type]
    alert.last_seen.FromNanoseconds(last_seen_ns)
    return Versioned(alert, 1)


def test_retention_removes_old_closed_alerts_then_the_oldest_closed_first() -> None:
    """Old closed alerts go; over the cap the oldest go, closed before open whatever their age."""
    open_, ack, nai = (
        alert_pb2.ALERT_STATE_OPEN,
        alert_pb2.ALERT_STATE_ACKNOWLEDGED,
        alert_pb2.ALERT_STATE_NOT_AN_ISSUE,
    )
    alerts = [
        _alert("old-open", open_, NOW - 90 * DAY_NS),
        _alert("old-ack", ack, NOW - 31 * DAY_NS),
        _alert("old-nai", nai, NOW - 40 * DAY_NS),
        _alert("young-nai", nai, NOW - 1 * DAY_NS),
        _alert("young-open", open_, NOW - 2 * DAY_NS),
        _alert("new-open", open_, NOW),
    ]
    by_age = [a.value.fingerprint for a in retention_victims(alerts, Retention(max_alerts=100), NOW)]
    assert sorted(by_age) == ["old-ack", "old-nai"]
    capped = [a.value.fingerprint for a in retention_victims(alerts, Retention(max_alerts=2), NOW)]
    assert capped == ["old-ack", "old-nai", "young-nai", "old-open"]


def test_retention_deletes_in_chunks_and_watches_see_deletions(run: Run) -> None:
    """250 closed old alerts go in transactions of at most 100; each appears as a deletion."""

    async def body(h: Harness) -> None:
        store = h.store
        node = inventory_pb2.Node(node_id="n")
        revision = 0
        for start in range(0, 250, 50):
            alerts = []
            for i in range(start, start + 50):
                alert = alert_pb2.Alert(fingerprint=f"fp-{i:03d}", state=alert_pb2.ALERT_STATE_NOT_AN_ISSUE)
                alert.last_seen.FromNanoseconds(NOW - 60 * DAY_NS)
                alerts.append((alert, 0))
            revision = await store.commit_batch(node, revision, alerts)
        kept = alert_pb2.Alert(fingerprint="open", state=alert_pb2.ALERT_STATE_OPEN)
        await store.put_alert(kept, 0)
        _, listed_at = await store.list_alerts()
        changes = store.watch_alerts(listed_at)
        duties = SingletonDuties(store, _no_seed, clock=lambda: NOW)
        try:
            assert await duties.enforce_retention() == 250
            groups = await take(changes, 3)
            assert [len(g) for g in groups] == [100, 100, 50]
            assert all(c.alert is None for g in groups for c in g)
        finally:
            await closed(changes)
        remaining, _ = await store.list_alerts()
        assert [a.value.fingerprint for a in remaining] == ["open"]

    run(body)


def test_an_alert_updated_after_the_retention_read_is_kept(run: Run) -> None:
    """delete_alerts is conditional per alert: one that changed stays, the others go."""

    async def body(h: Harness) -> None:
        store = h.store
        first = await store.put_alert(alert_pb2.Alert(fingerprint="a"), 0)
        second = await store.put_alert(alert_pb2.Alert(fingerprint="b"), 0)
        await store.put_alert(alert_pb2.Alert(fingerprint="b", occurrences=2), second)
        assert await store.delete_alerts([("a", first), ("b", second)]) == 1
        remaining, _ = await store.list_alerts()
        assert [a.value.fingerprint for a in remaining] == ["b"]

    run(body)


class StoreLiveness:
    """NodeLiveness on a MemoryStore: what Membership does, with a fixed lease."""

    def __init__(self, store: MemoryStore, controller_id: str) -> None:
        self.store = store
        self.controller_id = controller_id

    async def node_connected(self, node_id: str) -> None:
        await self.store.put_node_live(node_id, self.controller_id, 1)

    async def node_disconnected(self, node_id: str) -> None:
        await self.store.delete_node_live(node_id, self.controller_id)


def test_a_stream_holds_its_nodes_liveness_key_until_it_ends() -> None:
    """The liveness key exists before the node is online and goes when the stream ends."""

    async def body() -> None:
        store = MemoryStore()
        await store.seed_policies(
            [policy_model.to_proto(p) for p in builtin.load_builtin_policies().values()],
            builtin.DEFAULT_POLICY,
        )
        view = PolicyView(store)
        await view.load()
        server = grpc.aio.server()
        service = AgentService(store, view, "ctl-test", liveness=StoreLiveness(store, "ctl-test"))
        agent_pb2_grpc.add_AgentServiceServicer_to_server(service, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        requests: asyncio.Queue[agent_pb2.ConnectRequest | None] = asyncio.Queue()
        try:
            responses = _stream(port, requests)
            await requests.put(agent_pb2.ConnectRequest(hello=agent_pb2.Hello(node_id="node-a")))
            await _next(responses, "welcome")
            assert await store.live_nodes() == {"node-a": "ctl-test"}
            await requests.put(None)
            async with asyncio.timeout(5):
                async for _ in responses:
                    pass
                for _ in range(500):
                    if not await store.live_nodes():
                        break
                    await asyncio.sleep(0.01)
            node = await store.get_node("node-a")
            assert node is not None
            assert node.value.liveness == inventory_pb2.NODE_LIVENESS_OFFLINE
        finally:
            await server.stop(None)

    asyncio.run(body())


def test_batches_recorded_together_skip_duplicates_and_count_gaps() -> None:
    """Among batches coalesced into one commit, one already recorded is a duplicate and a hole in
    the sequence counts as a gap, exactly as when they are recorded one by one."""

    async def body() -> None:
        store = MemoryStore()
        node = await registered(store)
        first = await commit_batches(store, [evaluate(batch(1, shell()), "node-a", POLICIES, NOW)], node)
        items = [evaluate(batch(seq, shell()), "node-a", POLICIES, NOW) for seq in (1, 2, 5)]
        outcome = await commit_batches(store, items, first.node)
        assert outcome.duplicates == [True, False, False]
        assert outcome.transactions == 1
        assert (outcome.node.value.last_seq, outcome.node.value.sequence_gaps) == (5, 2)
        assert [s.after.last_seq for s in outcome.steps] == [1, 2, 5]
        alert = await store.get_alert(SHELL_FP)
        assert alert is not None
        assert alert.value.occurrences == 3

    asyncio.run(body())


def test_the_leader_seeds_the_builtin_policies_when_its_term_begins() -> None:
    """run() seeds first; a failing seed is logged and the term goes on."""

    async def body() -> None:
        store = MemoryStore()
        calls: list[int] = []

        async def seed() -> list[str]:
            calls.append(1)
            if len(calls) == 1:
                raise ConnectionError("etcd away")
            return await store.seed_policies(
                [policy_model.to_proto(p) for p in builtin.load_builtin_policies().values()],
                builtin.DEFAULT_POLICY,
            )

        for _ in range(2):
            duties = SingletonDuties(store, seed, node_sweep_s=3600, retention=Retention(interval_s=3600))
            term = asyncio.create_task(duties.run())
            await asyncio.sleep(0.05)
            assert not term.done(), "the term goes on"
            term.cancel()
        assert len(calls) == 2
        state = await store.policy_state()
        assert state.default_policy == builtin.DEFAULT_POLICY

    asyncio.run(body())
