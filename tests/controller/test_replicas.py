"""Replicas in-process: the recorder (one writer per replica), the singleton duties, and liveness
in the store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
import pytest
from storekit import Harness, Run, closed, take
from test_agent_stream import _next, _stream
from test_ingest import NOW, NS, POLICIES, SHELL_FP, SHOP, batch, harmless, registered, shell

from telltale.controller.agent_service import AgentService
from telltale.controller.duties import Retention, SingletonDuties, retention_victims
from telltale.controller.errors import Unavailable
from telltale.controller.ingest import BatchStep, commit_batches, evaluate
from telltale.controller.memstore import MemoryStore
from telltale.controller.policies import PolicyView
from telltale.controller.recorder import Recorder, RecorderStream
from telltale.controller.store import MAX_TXN_KEYS, Store, Versioned
from telltale.engine import builtin
from telltale.engine import policy as policy_model
from telltale.engine.evaluate import fingerprint
from telltale.v1 import agent_pb2, agent_pb2_grpc, alert_pb2, common_pb2, inventory_pb2

DAY_NS = 86_400 * NS
WAIT_S = 30.0


class CountingStore(MemoryStore):
    """A MemoryStore whose commits take a little while (as etcd's do) and are counted."""

    def __init__(self, commit_s: float = 0.002) -> None:
        super().__init__()
        self.commits = 0
        self.in_flight = 0
        self.sizes: list[int] = []
        self.commit_s = commit_s

    async def commit_records(
        self,
        nodes: Sequence[tuple[inventory_pb2.Node, int]],
        alerts: Sequence[tuple[alert_pb2.Alert, int]],
    ) -> int:
        self.commits += 1
        self.sizes.append(len(nodes) + len(alerts))
        self.in_flight += 1
        try:
            await asyncio.sleep(self.commit_s)
            return await super().commit_records(nodes, alerts)
        finally:
            self.in_flight -= 1


class Interloper:
    """A Store proxy where another replica writes just before each commit_records: `before` gets
    the nodes and alerts about to be committed and may write them through the real store."""

    def __init__(self, store: Store, before: Callable[[list[str], list[str]], Awaitable[None]]) -> None:
        self._store = store
        self._before = before
        self.commits = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def commit_records(
        self,
        nodes: Sequence[tuple[inventory_pb2.Node, int]],
        alerts: Sequence[tuple[alert_pb2.Alert, int]],
    ) -> int:
        self.commits += 1
        await self._before([n.node_id for n, _ in nodes], [a.fingerprint for a, _ in alerts])
        return await self._store.commit_records(nodes, alerts)


async def until(condition: Callable[[], bool], what: str, wait_s: float = WAIT_S) -> None:
    """Poll `condition` until it holds; fail the test after `wait_s`."""
    deadline = time.monotonic() + wait_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {wait_s}s: {what}")
        await asyncio.sleep(0.002)


async def attached(recorder: Recorder, node_id: str) -> RecorderStream:
    """A recorder stream whose node is registered (what a stream does before its Welcome)."""
    stream = recorder.attach(node_id)

    def register(node: inventory_pb2.Node) -> None:
        node.liveness = inventory_pb2.NODE_LIVENESS_ONLINE

    await (await stream.change(register))
    return stream


async def recorded(stream: RecorderStream, *batches: agent_pb2.EventBatch) -> list[BatchStep]:
    """Submit batches back-to-back, then wait for each to be recorded, in order."""
    futures = [await stream.record_batch(evaluate(b, stream.node_id, POLICIES, NOW + b.seq)) for b in batches]
    steps = []
    for future in futures:
        step = await future
        assert step is not None
        steps.append(step)
        stream.release()
    return steps


# -- the recorder ----------------------------------------------------------------------------
def test_batches_arriving_back_to_back_share_transactions_and_count_exactly() -> None:
    """200 batches submitted at once make a handful of transactions; every occurrence counts once."""

    async def body() -> None:
        store = CountingStore()
        recorder = Recorder(store)
        stream = await attached(recorder, "node-a")
        before = store.commits
        steps = await recorded(stream, *(batch(seq, shell(count=2)) for seq in range(1, 201)))
        await stream.close()
        assert [s.after.last_seq for s in steps] == list(range(1, 201)), "recorded once each, in order"
        assert not any(s.duplicate for s in steps)
        assert store.commits - before <= 10, f"{store.commits - before} transactions for 200 batches"
        alert = await store.get_alert(SHELL_FP)
        assert alert is not None
        assert alert.value.occurrences == 400
        node = await store.get_node("node-a")
        assert node is not None
        assert (node.value.last_seq, node.value.sequence_gaps) == (200, 0)

    asyncio.run(body())


def test_a_batch_is_recorded_only_with_its_transaction() -> None:
    """While a commit is in flight, nothing of the batches queued behind it is resolved; they go
    together in the next transaction."""

    async def body() -> None:
        store = CountingStore(commit_s=0.05)
        recorder = Recorder(store)
        stream = await attached(recorder, "node-a")
        before = store.commits
        first = await stream.record_batch(evaluate(batch(1, shell()), "node-a", POLICIES, NOW))
        await until(lambda: store.in_flight == 1, "the first commit in flight")
        queued = [
            await stream.record_batch(evaluate(batch(seq, shell()), "node-a", POLICIES, NOW))
            for seq in (2, 3, 4)
        ]
        assert not first.done()
        assert not any(f.done() for f in queued)
        step = await first
        assert step is not None
        assert not any(f.done() for f in queued), "resolved before their own transaction committed"
        node = await store.get_node("node-a")
        assert node is not None
        assert node.value.last_seq == 1
        assert [(await f).after.last_seq for f in queued] == [2, 3, 4]  # type: ignore[union-attr]
        assert store.commits - before == 2, "the three queued batches went in one transaction"
        for _ in range(4):
            stream.release()
        await stream.close()

    asyncio.run(body())


def test_a_transaction_never_holds_more_keys_than_etcd_allows() -> None:
    """Batches of many distinct alerts from several streams are split so that no transaction writes
    more than MAX_TXN_KEYS keys, and every alert is recorded once."""

    async def body() -> None:
        store = CountingStore()
        recorder = Recorder(store)
        streams = [await attached(recorder, f"node-{n}") for n in range(3)]

        def distinct(n: int, seq: int) -> agent_pb2.EventBatch:
            apps = [
                common_pb2.Workload(id=f"w{n}-{seq}-{i}", application=f"app{n}-{seq}-{i}") for i in range(10)
            ]
            return batch(seq, *(shell(w.id) for w in apps), workloads=apps)

        await asyncio.gather(
            *(recorded(s, *(distinct(n, seq) for seq in range(1, 31))) for n, s in enumerate(streams))
        )
        for s in streams:
            await s.close()
        assert max(store.sizes) <= MAX_TXN_KEYS
        alerts, _ = await store.list_alerts()
        assert len(alerts) == 900
        assert all(a.value.occurrences == 1 for a in alerts)

    asyncio.run(body())


def test_a_batch_with_more_alerts_than_a_transaction_holds_is_recorded_whole() -> None:
    """A single batch of more distinct alerts than MAX_TXN_KEYS goes alone, in chunks, the sequence last."""

    async def body() -> None:
        store = CountingStore()
        recorder = Recorder(store)
        stream = await attached(recorder, "node-a")
        apps = [common_pb2.Workload(id=f"w-{i}", application=f"app-{i}") for i in range(MAX_TXN_KEYS + 30)]
        [step] = await recorded(stream, batch(1, *(shell(w.id) for w in apps), workloads=apps))
        [after] = await recorded(stream, batch(2, shell(apps[0].id), workloads=apps[:1]))
        await stream.close()
        assert (step.duplicate, step.after.last_seq, after.after.last_seq) == (False, 1, 2)
        alerts, _ = await store.list_alerts()
        assert len(alerts) == MAX_TXN_KEYS + 30
        assert sorted(a.value.occurrences for a in alerts)[-1] == 2

    asyncio.run(body())


def test_batches_recorded_together_skip_duplicates_and_count_gaps() -> None:
    """Among batches recorded in one transaction, one already recorded is a duplicate and a hole in
    the sequence counts as a gap, exactly as when they are recorded one by one."""

    async def body() -> None:
        store = CountingStore()
        recorder = Recorder(store)
        stream = await attached(recorder, "node-a")
        await recorded(stream, batch(1, shell()))
        before = store.commits
        steps = await recorded(stream, *(batch(seq, shell()) for seq in (1, 2, 5)))
        await stream.close()
        assert [s.duplicate for s in steps] == [True, False, False]
        assert store.commits - before == 1
        assert [s.after.last_seq for s in steps] == [1, 2, 5]
        node = await store.get_node("node-a")
        assert node is not None
        assert (node.value.last_seq, node.value.sequence_gaps) == (5, 2)
        alert = await store.get_alert(SHELL_FP)
        assert alert is not None
        assert alert.value.occurrences == 3

    asyncio.run(body())


def test_commit_batches_alone_skips_duplicates_and_counts_gaps() -> None:
    """ingest.commit_batches (the recorder's path for an oversized batch) keeps the same rules."""

    async def body() -> None:
        store = MemoryStore()
        node = await registered(store)
        first = await commit_batches(store, [evaluate(batch(1, shell()), "node-a", POLICIES, NOW)], node)
        items = [evaluate(batch(seq, shell()), "node-a", POLICIES, NOW) for seq in (1, 2, 5)]
        outcome = await commit_batches(store, items, first.node)
        assert outcome.duplicates == [True, False, False]
        assert outcome.transactions == 1
        assert (outcome.node.value.last_seq, outcome.node.value.sequence_gaps) == (5, 2)

    asyncio.run(body())


def test_an_alert_another_replica_wrote_is_merged_onto_not_overwritten(run: Run) -> None:
    """The cached alert is stale after another replica's write: the commit loses, the recorder
    merges onto what the winner wrote (from the failed transaction's answer) and loses nothing."""

    async def body(h: Harness) -> None:
        armed, interfered = [False], []

        async def other_replica(nodes: list[str], alerts: list[str]) -> None:
            if SHELL_FP in alerts and armed[0] and not interfered:
                current = await h.store.get_alert(SHELL_FP)
                assert current is not None
                bumped = alert_pb2.Alert()
                bumped.CopyFrom(current.value)
                bumped.occurrences += 10
                interfered.append(await h.store.put_alert(bumped, current.mod_revision))

        store = Interloper(h.store, other_replica)
        recorder = Recorder(store)  # type: ignore[arg-type]
        stream = await attached(recorder, "node-a")
        await recorded(stream, batch(1, shell(count=2)))  # cached now
        armed[0] = True
        commits = store.commits
        await recorded(stream, batch(2, shell(count=3)))
        await stream.close()
        assert interfered, "the other replica wrote"
        assert store.commits - commits == 2, "one lost commit, one retry"
        alert = await h.store.get_alert(SHELL_FP)
        assert alert is not None
        assert alert.value.occurrences == 2 + 10 + 3

    run(body)


def test_a_node_whose_record_keeps_moving_fails_alone(run: Run) -> None:
    """A stale stream: another replica writes node-2's record before every commit. Only node-2's
    stream fails (Unavailable); node-1 and node-3, in the same transactions, are recorded exactly."""

    async def body(h: Harness) -> None:
        armed = [False]

        async def other_replica(nodes: list[str], alerts: list[str]) -> None:
            if "node-2" in nodes and armed[0]:
                current = await h.store.get_node("node-2")
                assert current is not None
                moved = inventory_pb2.Node()
                moved.CopyFrom(current.value)
                moved.controller_id = "ctl-other"
                moved.last_seen.GetCurrentTime()
                await h.store.put_node(moved, current.mod_revision)

        recorder = Recorder(Interloper(h.store, other_replica))  # type: ignore[arg-type]
        streams = [await attached(recorder, f"node-{n}") for n in (1, 2, 3)]
        armed[0] = True
        futures = [
            [
                await s.record_batch(evaluate(batch(seq, shell(count=n + 1)), s.node_id, POLICIES, NOW))
                for seq in (1, 2, 3)
            ]
            for n, s in enumerate(streams)
        ]
        results = [await asyncio.gather(*f, return_exceptions=True) for f in futures]
        assert all(isinstance(r, BatchStep) for r in results[0] + results[2])
        assert all(isinstance(r, Unavailable) for r in results[1]), results[1]
        with pytest.raises(Unavailable, match="node-2"):
            streams[1].failed.result()
        assert not streams[0].failed.done()
        assert not streams[2].failed.done()
        alert = await h.store.get_alert(SHELL_FP)
        assert alert is not None
        assert alert.value.occurrences == 3 * 1 + 3 * 3, "node-1 and node-3 counted, node-2 not"
        assert list(alert.value.nodes) == ["node-1", "node-3"]
        records = {n.value.node_id: n.value for n in await h.store.list_node_records()}
        assert (records["node-1"].last_seq, records["node-2"].last_seq, records["node-3"].last_seq) == (
            3,
            0,
            3,
        )
        for s in streams:
            await s.close()

    run(body)


def test_heartbeats_of_500_streams_go_in_a_few_transactions(run: Run) -> None:
    """500 streams registering, then all sending a heartbeat at once: a handful of transactions each
    time, every record changed."""

    async def body(h: Harness) -> None:
        store = Interloper(h.store, lambda nodes, alerts: asyncio.sleep(0))
        recorder = Recorder(store)  # type: ignore[arg-type]
        streams = await asyncio.gather(*(attached(recorder, f"node-{i:03}") for i in range(500)))
        assert store.commits <= 12, f"{store.commits} transactions for 500 registrations"
        commits = store.commits

        def beat(node: inventory_pb2.Node) -> None:
            node.spooled_batches = 7

        futures = [await s.change(beat) for s in streams]
        await asyncio.gather(*futures)
        assert store.commits - commits <= 6, f"{store.commits - commits} transactions for 500 heartbeats"
        records = await h.store.list_nodes()
        assert len(records) == 500
        assert all(
            r.spooled_batches == 7 and r.liveness == inventory_pb2.NODE_LIVENESS_ONLINE for r in records
        )
        for s in streams:
            await s.close()
        assert not recorder.running() or not recorder._nodes

    run(body)


def test_transactions_in_flight_together_never_share_a_key() -> None:
    """With slow commits, groups of different nodes go in flight together, never two with the same
    key, and each node's changes still apply in the order submitted."""

    class Overlap(CountingStore):
        def __init__(self) -> None:
            super().__init__(commit_s=0.02)
            self.keys_in_flight: list[set[str]] = []
            self.most = 0

        async def commit_records(
            self,
            nodes: Sequence[tuple[inventory_pb2.Node, int]],
            alerts: Sequence[tuple[alert_pb2.Alert, int]],
        ) -> int:
            keys = {f"node/{n.node_id}" for n, _ in nodes} | {a.fingerprint for a, _ in alerts}
            assert all(keys.isdisjoint(other) for other in self.keys_in_flight), "two commits share a key"
            self.keys_in_flight.append(keys)
            self.most = max(self.most, len(self.keys_in_flight))
            try:
                return await super().commit_records(nodes, alerts)
            finally:
                self.keys_in_flight.remove(keys)

    async def body() -> None:
        store = Overlap()
        recorder = Recorder(store)
        streams = await asyncio.gather(*(attached(recorder, f"node-{i:03}") for i in range(300)))

        def tag(value: str) -> Callable[[inventory_pb2.Node], None]:
            def change(node: inventory_pb2.Node) -> None:
                node.os += value

            return change

        futures = [await s.change(tag(t)) for t in "abc" for s in streams]
        futures += [
            await s.record_batch(evaluate(batch(1, shell()), s.node_id, POLICIES, NOW)) for s in streams[:50]
        ]
        await asyncio.gather(*futures)
        for s in streams[:50]:
            s.release()
        for s in streams:
            await s.close()
        assert store.most > 1, "no two transactions were ever in flight together"
        assert {n.os for n in await store.list_nodes()} == {"abc"}
        alert = await store.get_alert(SHELL_FP)
        assert alert is not None
        assert alert.value.occurrences == 50

    asyncio.run(body())


# -- many agent streams over gRPC --------------------------------------------------------------
async def _serve_store(store: Store) -> tuple[grpc.aio.Server, int, AgentService]:
    await store.seed_policies(
        [policy_model.to_proto(p) for p in builtin.load_builtin_policies().values()], builtin.DEFAULT_POLICY
    )
    view = PolicyView(store)
    await view.load()
    server = grpc.aio.server()
    service = AgentService(store, view, "ctl-test")
    agent_pb2_grpc.add_AgentServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port, service


SHOP_BIN = fingerprint("process.shell_launched", "shop", "api", "/bin/bash")


def test_twenty_streams_of_one_application_share_transactions_and_count_exactly(run: Run) -> None:
    """20 agents of one application send 30 batches each back-to-back, all with the same alerts:
    every batch acknowledged in order, no stream fails, occurrences equal the events sent, and far
    fewer transactions than batches."""

    agents, batches = 20, 30

    async def body(h: Harness) -> None:
        server, port, service = await _serve_store(h.store)
        queues: list[asyncio.Queue[agent_pb2.ConnectRequest | None]] = [
            asyncio.Queue() for _ in range(agents)
        ]
        try:

            async def agent(i: int) -> list[int]:
                requests = queues[i]
                responses = _stream(port, requests)
                await requests.put(agent_pb2.ConnectRequest(hello=agent_pb2.Hello(node_id=f"node-{i:02}")))
                await _next(responses, "welcome")
                for seq in range(1, batches + 1):
                    events = [shell(count=2), shell(path="/bin/bash"), harmless()]
                    await requests.put(agent_pb2.ConnectRequest(batch=batch(seq, *events, workloads=[SHOP])))
                acks = []
                async with asyncio.timeout(WAIT_S):
                    while len(acks) < batches:
                        acks.append((await _next(responses, "batch_ack")).batch_ack.seq)
                await requests.put(None)
                async for _ in responses:
                    pass
                return acks

            before = service.recorder.transactions
            acked = await asyncio.gather(*(agent(i) for i in range(agents)))
            transactions = service.recorder.transactions - before
        finally:
            for queue in queues:
                queue.put_nowait(None)
            await server.stop(None)
        assert all(acks == list(range(1, batches + 1)) for acks in acked)
        sh, bash = await h.store.get_alert(SHELL_FP), await h.store.get_alert(SHOP_BIN)
        assert sh is not None
        assert bash is not None
        assert (sh.value.occurrences, bash.value.occurrences) == (agents * batches * 2, agents * batches)
        assert len(sh.value.nodes) == agents
        records = await h.store.list_nodes()
        assert sorted(r.last_seq for r in records) == [batches] * agents
        assert transactions <= agents * batches // 4, (
            f"{transactions} transactions for {agents * batches} batches"
        )
        print(f"\n{agents} streams x {batches} batches: {transactions} transactions")

    run(body)


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
        try:
            # The watch starts when etcd answers its creation: delete until it reports one.
            async with asyncio.timeout(5):
                while not first.done():
                    await store.put_node_live("n1", "ctl-a", 0)
                    await store.delete_node_live("n1", "ctl-a")
                    await asyncio.wait([first], timeout=0.05)
            assert first.result() == "n1"
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

    async def node_connected(self, node_id: str) -> str:
        await self.store.put_node_live(node_id, self.controller_id, 1)
        return node_id  # the stream's handle

    async def node_disconnected(self, handle: object) -> None:
        assert isinstance(handle, str)
        await self.store.delete_node_live(handle, self.controller_id)


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
