"""The Store contract, held by the in-memory twin and by EtcdStore on a real etcd alike.

Every test runs twice: against MemoryStore, and against EtcdStore on an embedded etcd started
for this module, each test under its own key prefix (the fixtures are in conftest.py). The
policy-management operations have their own module, test_store_policies.py.
"""

from __future__ import annotations

import asyncio

import aetcd
import pytest
from storekit import Harness, Run, builtins, closed, custom_policy, take

from telltale.controller.memstore import MemoryStore
from telltale.controller.store import MAX_BATCH_ALERTS, MAX_TXN_KEYS, AlertChange, Conflict, Stale
from telltale.engine import builtin
from telltale.v1 import alert_pb2, common_pb2, inventory_pb2


def alert(fingerprint: str, occurrences: int = 1, revision: int = 0) -> alert_pb2.Alert:
    return alert_pb2.Alert(
        fingerprint=fingerprint,
        alert_type="process.shell_launched",
        application="shop",
        occurrences=occurrences,
        revision=revision,
    )


def node(node_id: str = "node-a", last_seq: int = 0) -> inventory_pb2.Node:
    return inventory_pb2.Node(node_id=node_id, hostname=f"{node_id}.example", last_seq=last_seq)


# -- policies --------------------------------------------------------------------------------


def test_create_policy_refuses_an_existing_name_and_writes_nothing(run: Run) -> None:
    """Creating a policy stores it at the returned revision; a second create of the name is a Conflict."""

    async def body(h: Harness) -> None:
        revision = await h.store.create_policy(custom_policy("Strict"))
        stored = await h.store.get_policy("Strict")
        assert stored is not None
        assert stored.mod_revision == revision
        assert (stored.value.name, stored.value.revision) == ("Strict", 1)
        with pytest.raises(Conflict):
            await h.store.create_policy(custom_policy("Strict", description="another"))
        again = await h.store.get_policy("Strict")
        assert again == stored
        assert (await h.store.policy_state()).revision == revision
        assert await h.store.get_policy("Absent") is None

    run(body)


def test_update_policy_is_a_compare_and_swap_on_the_mod_revision(run: Run) -> None:
    """An update at the read mod revision succeeds; one at a stale mod revision raises Conflict."""

    async def body(h: Harness) -> None:
        first = await h.store.create_policy(custom_policy("Strict"))
        second = await h.store.update_policy(custom_policy("Strict", "edited", revision=2), first)
        assert second > first
        stored = await h.store.get_policy("Strict")
        assert stored is not None
        assert (stored.value.description, stored.value.revision, stored.mod_revision) == ("edited", 2, second)
        with pytest.raises(Conflict):
            await h.store.update_policy(custom_policy("Strict", "lost update", revision=3), first)
        assert await h.store.get_policy("Strict") == stored

    run(body)


def test_names_are_encoded_inside_keys(run: Run) -> None:
    """Policy names and node ids with '/', '%' and spaces are stored and read back as given."""

    async def body(h: Harness) -> None:
        policy = custom_policy("placeholder")
        policy.name = "Team A / web %2F"
        await h.store.create_policy(policy)
        await h.store.create_policy(custom_policy("Team A"))
        stored = await h.store.get_policy("Team A / web %2F")
        assert stored is not None
        assert stored.value.name == "Team A / web %2F"
        assert set((await h.store.policy_state()).policies) == {"Team A", "Team A / web %2F"}
        await h.store.put_node(node("rack/1 %"), 0)
        assert await h.store.get_node("rack/1 %") is not None
        assert await h.store.get_node("rack") is None

    run(body)


def test_seed_policies_writes_once_then_nothing(run: Run) -> None:
    """Seeding writes every built-in and the default; seeding again writes nothing at all."""

    async def body(h: Harness) -> None:
        seeded = await h.store.seed_policies(builtins(), builtin.DEFAULT_POLICY)
        assert sorted(seeded) == ["Max Alert", "Standard"]
        state = await h.store.policy_state()
        assert state.default_policy == "Standard"
        assert {name: p.revision for name, p in state.policies.items()} == {"Max Alert": 1, "Standard": 1}
        assert all(p.builtin for p in state.policies.values())
        before = {name: await h.store.get_policy(name) for name in state.policies}

        assert await h.store.seed_policies(builtins(), "Max Alert") == []
        after = await h.store.policy_state()
        assert after.revision == state.revision
        assert after.default_policy == "Standard"  # an existing default is never replaced
        assert {name: await h.store.get_policy(name) for name in after.policies} == before

    run(body)


def test_replicas_seeding_at_once_write_each_builtin_once(run: Run) -> None:
    """Concurrent seeding (replicas starting together) writes every built-in exactly once."""

    async def body(h: Harness) -> None:
        results = await asyncio.gather(*(h.store.seed_policies(builtins(), "Standard") for _ in range(3)))
        written = [name for names in results for name in names]
        assert sorted(written) == ["Max Alert", "Standard"]
        state = await h.store.policy_state()
        assert {name: p.revision for name, p in state.policies.items()} == {"Max Alert": 1, "Standard": 1}
        assert state.default_policy == "Standard"

    run(body)


def test_seeding_a_changed_builtin_bumps_only_its_revision(run: Run) -> None:
    """A built-in whose shipped content changed is rewritten at revision + 1; the others stay."""

    async def body(h: Harness) -> None:
        await h.store.seed_policies(builtins(), builtin.DEFAULT_POLICY)
        state = await h.store.policy_state()
        max_alert = await h.store.get_policy("Max Alert")
        upgraded = builtins()
        for p in upgraded:
            if p.name == "Standard":
                p.description = "Standard, as shipped by the next release."
        assert await h.store.seed_policies(upgraded, builtin.DEFAULT_POLICY) == ["Standard"]
        standard = await h.store.get_policy("Standard")
        assert standard is not None
        assert standard.value.revision == 2
        assert standard.value.description == "Standard, as shipped by the next release."
        assert await h.store.get_policy("Max Alert") == max_alert
        after = await h.store.policy_state()
        assert after.revision == standard.mod_revision > state.revision
        assert await h.store.seed_policies(upgraded, builtin.DEFAULT_POLICY) == []

    run(body)


def test_policy_state_revision_moves_on_every_change_and_is_watched(run: Run) -> None:
    """Every policy write moves the policy-state revision; a watch yields each such revision in order."""

    async def body(h: Harness) -> None:
        start = (await h.store.policy_state()).revision
        watch = h.store.watch_policy_state(start)
        revisions = []
        revisions.append(await h.store.create_policy(custom_policy("A")))
        await h.store.put_alert(alert("not-policy"), 0)  # not a policy change
        revisions.append(await h.store.update_policy(custom_policy("A", "edited", 2), revisions[-1]))
        revisions.append(await h.store.create_policy(custom_policy("B")))
        await h.store.seed_policies(builtins(), builtin.DEFAULT_POLICY)
        state = await h.store.policy_state()
        assert revisions == sorted(set(revisions))
        assert state.revision > revisions[-1]
        seen: list[int] = []
        while not seen or seen[-1] < state.revision:
            (revision,) = await take(watch, 1)
            assert not seen or revision >= seen[-1], "watched revisions go forward"
            if not seen or revision != seen[-1]:
                seen.append(revision)
        await closed(watch)
        assert seen[:3] == revisions
        assert all(r > revisions[-1] for r in seen[3:])

        resumed = h.store.watch_policy_state(revisions[0])
        assert (await take(resumed, 1))[0] == revisions[1]
        await closed(resumed)

    run(body)


# -- alerts and nodes ------------------------------------------------------------------------


def test_put_alert_is_a_compare_and_swap_where_zero_means_absent(run: Run) -> None:
    """put_alert creates only with 0, replaces only at the current mod revision, else raises Conflict."""

    async def body(h: Harness) -> None:
        created = await h.store.put_alert(alert("fp-1", revision=999), 0)
        stored = await h.store.get_alert("fp-1")
        assert stored is not None
        assert stored.mod_revision == stored.value.revision == created  # the store sets the revision
        with pytest.raises(Conflict):
            await h.store.put_alert(alert("fp-1", occurrences=50), 0)
        updated = await h.store.put_alert(alert("fp-1", occurrences=2), created)
        assert updated > created
        with pytest.raises(Conflict):
            await h.store.put_alert(alert("fp-1", occurrences=99), created)
        with pytest.raises(Conflict):
            await h.store.put_alert(alert("fp-absent"), created)
        current = await h.store.get_alert("fp-1")
        assert current is not None
        assert (current.value.occurrences, current.mod_revision) == (2, updated)
        assert await h.store.get_alert("fp-absent") is None

    run(body)


def test_put_node_is_a_compare_and_swap_where_zero_means_absent(run: Run) -> None:
    """put_node creates only with 0 and replaces only at the current mod revision."""

    async def body(h: Harness) -> None:
        created = await h.store.put_node(node(last_seq=1), 0)
        with pytest.raises(Conflict):
            await h.store.put_node(node(last_seq=7), 0)
        updated = await h.store.put_node(node(last_seq=2), created)
        with pytest.raises(Conflict):
            await h.store.put_node(node(last_seq=9), created)
        stored = await h.store.get_node("node-a")
        assert stored is not None
        assert (stored.value.last_seq, stored.mod_revision) == (2, updated)
        assert await h.store.get_node("node-b") is None
        await h.store.put_node(node("node-b"), 0)
        assert [n.node_id for n in await h.store.list_nodes()] == ["node-a", "node-b"]

    run(body)


def test_workloads_are_recorded_and_listed(run: Run) -> None:
    """put_workload records (and replaces) a workload by id; list_workloads returns each once."""

    async def body(h: Harness) -> None:
        await h.store.put_workload(common_pb2.Workload(id="w-1", application="shop"))
        await h.store.put_workload(common_pb2.Workload(id="w-2", application="blog"))
        await h.store.put_workload(common_pb2.Workload(id="w-1", application="shop", component="api"))
        listed = sorted(await h.store.list_workloads(), key=lambda w: w.id)
        assert [(w.id, w.application, w.component) for w in listed] == [
            ("w-1", "shop", "api"),
            ("w-2", "blog", ""),
        ]
        got = await h.store.get_workload("w-1")
        assert got is not None
        assert got.component == "api"
        assert await h.store.get_workload("w-3") is None

    run(body)


def test_commit_batch_writes_everything_at_one_revision(run: Run) -> None:
    """A successful commit writes the node and every alert at the one revision it returns."""

    async def body(h: Harness) -> None:
        node_rev = await h.store.put_node(node(last_seq=1), 0)
        old_rev = await h.store.put_alert(alert("old"), 0)
        revision = await h.store.commit_batch(
            node(last_seq=2), node_rev, [(alert("old", occurrences=2), old_rev), (alert("new"), 0)]
        )
        stored_node = await h.store.get_node("node-a")
        old, new = await h.store.get_alert("old"), await h.store.get_alert("new")
        assert stored_node is not None
        assert old is not None
        assert new is not None
        assert stored_node.mod_revision == old.mod_revision == new.mod_revision == revision
        assert (stored_node.value.last_seq, old.value.occurrences) == (2, 2)
        # A batch with no alerts records the node alone.
        assert await h.store.commit_batch(node(last_seq=3), revision, []) > revision

    run(body)


def test_commit_batch_with_one_stale_revision_writes_nothing(run: Run) -> None:
    """One stale expected revision among many makes the whole commit a Conflict: no key changes."""

    async def body(h: Harness) -> None:
        node_rev = await h.store.put_node(node(last_seq=1), 0)
        a_rev = await h.store.put_alert(alert("a"), 0)
        b_first = await h.store.put_alert(alert("b"), 0)
        b_rev = await h.store.put_alert(alert("b", occurrences=2), b_first)
        before = (await h.store.list_alerts())[0], await h.store.get_node("node-a")

        a, b = (alert("a", 5), a_rev), (alert("b", 5), b_rev)
        cases = [
            # (expected node revision, alerts): exactly one expectation is wrong in each
            (node_rev, [a, (alert("b", 5), b_first), (alert("c"), 0)]),  # b is stale
            (node_rev, [a, b, (alert("c"), 0), (alert("b-copy"), b_rev)]),  # b-copy does not exist
            (node_rev, [(alert("c"), 0), b, (alert("a", 5), 0)]),  # a exists
            (0, [a, b, (alert("c"), 0)]),  # the node exists
            (node_rev - 1 if node_rev > 1 else a_rev, [a, b]),  # the node is at another revision
        ]
        for expected_node, alerts in cases:
            with pytest.raises(Conflict):
                await h.store.commit_batch(node(last_seq=2), expected_node, alerts)
        after = (await h.store.list_alerts())[0], await h.store.get_node("node-a")
        assert after == before
        assert await h.store.get_alert("c") is None

    run(body)


def test_commit_batch_refuses_more_alerts_than_one_transaction_holds(run: Run) -> None:
    """More than MAX_BATCH_ALERTS alerts raise ValueError and write nothing."""

    async def body(h: Harness) -> None:
        too_many = [(alert(f"fp-{i}"), 0) for i in range(MAX_BATCH_ALERTS + 1)]
        with pytest.raises(ValueError, match=str(MAX_BATCH_ALERTS)):
            await h.store.commit_batch(node(), 0, too_many)
        assert await h.store.get_node("node-a") is None
        assert (await h.store.list_alerts())[0] == []
        await h.store.commit_batch(node(), 0, too_many[:MAX_BATCH_ALERTS])
        assert len((await h.store.list_alerts())[0]) == MAX_BATCH_ALERTS

    run(body)


def test_commit_records_writes_nodes_and_alerts_at_one_revision(run: Run) -> None:
    """Several node records and alerts, new and existing, are written at the one revision returned."""

    async def body(h: Harness) -> None:
        a_rev = await h.store.put_node(node("node-a", last_seq=1), 0)
        old_rev = await h.store.put_alert(alert("old"), 0)
        revision = await h.store.commit_records(
            [(node("node-a", last_seq=2), a_rev), (node("node-b", last_seq=7), 0)],
            [(alert("old", occurrences=3), old_rev), (alert("new"), 0)],
        )
        stored = [await h.store.get_node("node-a"), await h.store.get_node("node-b")]
        alerts = [await h.store.get_alert("old"), await h.store.get_alert("new")]
        assert all(v is not None and v.mod_revision == revision for v in [*stored, *alerts])
        assert [v.value.last_seq for v in stored if v is not None] == [2, 7]
        assert [v.value.occurrences for v in alerts if v is not None] == [3, 1]
        # Node records alone, or alerts alone, are fine too.
        assert await h.store.commit_records([(node("node-a", last_seq=3), revision)], []) > revision
        assert await h.store.commit_records([], [(alert("other"), 0)]) > revision

    run(body)


def test_commit_records_that_lost_writes_nothing_and_says_what_moved(run: Run) -> None:
    """A stale expectation fails the whole commit; Stale carries the current value of exactly the keys
    that moved (None for one that is gone), read in the same transaction."""

    async def body(h: Harness) -> None:
        a_rev = await h.store.put_node(node("node-a", last_seq=1), 0)
        b_rev = await h.store.put_node(node("node-b", last_seq=4), 0)
        b_now = await h.store.put_node(node("node-b", last_seq=5), b_rev)  # another replica wrote it
        x_first = await h.store.put_alert(alert("x"), 0)
        x_now = await h.store.put_alert(alert("x", occurrences=9), x_first)
        y_rev = await h.store.put_alert(alert("y"), 0)
        gone_rev = await h.store.put_alert(alert("gone"), 0)
        assert await h.store.delete_alerts([("gone", gone_rev)]) == 1
        before = (await h.store.list_alerts())[0], await h.store.list_node_records()
        with pytest.raises(Stale) as lost:
            await h.store.commit_records(
                [(node("node-a", last_seq=2), a_rev), (node("node-b", last_seq=6), b_rev)],
                [
                    (alert("x", occurrences=2), x_first),
                    (alert("y", occurrences=2), y_rev),
                    (alert("gone", occurrences=2), gone_rev),
                ],
            )
        assert isinstance(lost.value, Conflict)
        assert set(lost.value.nodes) == {"node-b"}
        moved_b = lost.value.nodes["node-b"]
        assert moved_b is not None
        assert (moved_b.value.last_seq, moved_b.mod_revision) == (5, b_now)
        assert set(lost.value.alerts) == {"x", "gone"}
        moved_x = lost.value.alerts["x"]
        assert moved_x is not None
        assert (moved_x.value.occurrences, moved_x.mod_revision, moved_x.value.revision) == (9, x_now, x_now)
        assert lost.value.alerts["gone"] is None
        # A record expected absent that exists is reported too.
        with pytest.raises(Stale) as created:
            await h.store.commit_records([(node("node-a"), 0)], [])
        assert set(created.value.nodes) == {"node-a"}
        assert created.value.alerts == {}
        after = (await h.store.list_alerts())[0], await h.store.list_node_records()
        assert after == before

    run(body)


def test_commit_records_holds_at_most_max_txn_keys(run: Run) -> None:
    """MAX_TXN_KEYS keys go in one commit (within etcd's default --max-txn-ops); one more, none, or
    a key twice raise ValueError and write nothing."""

    async def body(h: Harness) -> None:
        nodes = [(node(f"node-{i}"), 0) for i in range(10)]
        alerts = [(alert(f"fp-{i}"), 0) for i in range(MAX_TXN_KEYS - 10)]
        with pytest.raises(ValueError, match=str(MAX_TXN_KEYS)):
            await h.store.commit_records(nodes, [*alerts, (alert("one-more"), 0)])
        with pytest.raises(ValueError, match=str(MAX_TXN_KEYS)):
            await h.store.commit_records([], [])
        with pytest.raises(ValueError, match="once"):
            await h.store.commit_records([(node("n"), 0), (node("n"), 0)], [])
        assert (await h.store.list_alerts())[0] == []
        assert await h.store.list_nodes() == []
        await h.store.commit_records(nodes, alerts)
        assert len((await h.store.list_alerts())[0]) == MAX_TXN_KEYS - 10
        assert len(await h.store.list_nodes()) == 10
        # Every key compared stale at once: the failure branch reads them all back.
        with pytest.raises(Stale) as lost:
            await h.store.commit_records(nodes, alerts)
        assert (len(lost.value.nodes), len(lost.value.alerts)) == (10, MAX_TXN_KEYS - 10)

    run(body)


def test_list_alerts_returns_the_revision_it_read_at(run: Run) -> None:
    """The listing revision covers every listed alert; a watch after it yields only later changes."""

    async def body(h: Harness) -> None:
        await h.store.put_alert(alert("a"), 0)
        b_rev = await h.store.put_alert(alert("b"), 0)
        node_rev = await h.store.put_node(node(), 0)  # a later write, not to an alert
        listed, revision = await h.store.list_alerts()
        assert sorted(v.value.fingerprint for v in listed) == ["a", "b"]
        assert all(v.value.revision == v.mod_revision <= b_rev for v in listed)
        assert revision == node_rev
        watch = h.store.watch_alerts(revision)
        c_rev = await h.store.put_alert(alert("c"), 0)
        (group,) = await take(watch, 1)
        await closed(watch)
        assert [(c.fingerprint, c.revision, c.created) for c in group] == [("c", c_rev, True)]

    run(body)


def test_watch_alerts_groups_one_commit_and_resumes_after_a_revision(run: Run) -> None:
    """All alerts of one commit come as one list at one revision; a watch resumes right after a given one."""

    async def body(h: Harness) -> None:
        _, start = await h.store.list_alerts()
        x_rev = await h.store.put_alert(alert("x"), 0)
        node_rev = await h.store.put_node(node(), 0)
        batch_rev = await h.store.commit_batch(
            node(last_seq=1), node_rev, [(alert("x", 2), x_rev), (alert("y"), 0), (alert("z"), 0)]
        )
        z_rev = await h.store.put_alert(alert("z", 3), batch_rev)

        def summary(group: list[AlertChange]) -> list[tuple[str, int, bool, int]]:
            return [
                (c.fingerprint, c.revision, c.created, c.alert.occurrences if c.alert else -1) for c in group
            ]

        watch = h.store.watch_alerts(start)
        groups = await take(watch, 3)
        await closed(watch)
        assert [summary(g) for g in groups] == [
            [("x", x_rev, True, 1)],
            [("x", batch_rev, False, 2), ("y", batch_rev, True, 1), ("z", batch_rev, True, 1)],
            [("z", z_rev, False, 3)],
        ]
        assert all(c.alert is not None and c.alert.revision == c.revision for g in groups for c in g)

        resumed = h.store.watch_alerts(x_rev)  # the node write in between is not an alert change
        (first,) = await take(resumed, 1)
        assert [c.revision for c in first] == [batch_rev] * 3
        live_rev = await h.store.put_alert(alert("live"), 0)
        replayed, live = await take(resumed, 2)
        await closed(resumed)
        assert summary(replayed) == [("z", z_rev, False, 3)]
        assert summary(live) == [("live", live_rev, True, 1)]

    run(body)


def test_watch_alerts_follows_changes_made_after_it_started(run: Run) -> None:
    """A watch already waiting sees a commit made later, still as one list."""

    async def body(h: Harness) -> None:
        _, start = await h.store.list_alerts()
        watch = h.store.watch_alerts(start)
        first = await h.store.put_alert(alert("first"), 0)
        assert [c.revision for c in (await take(watch, 1))[0]] == [first]  # the watch is live now
        revision = await h.store.commit_batch(node(), 0, [(alert(f"fp-{i}"), 0) for i in range(5)])
        (group,) = await take(watch, 1)
        await closed(watch)
        assert sorted(c.fingerprint for c in group) == [f"fp-{i}" for i in range(5)]
        assert {c.revision for c in group} == {revision}

    run(body)


def test_a_watch_from_before_the_compacted_history_fails(run: Run) -> None:
    """After a compaction, watching from before it raises RevisionCompactedError; after it still works."""

    async def body(h: Harness) -> None:
        first = await h.store.put_alert(alert("a"), 0)
        second = await h.store.put_alert(alert("b"), 0)
        third = await h.store.put_alert(alert("c"), 0)
        await h.compact(third)
        ok = h.store.watch_alerts(second)
        (group,) = await take(ok, 1)
        await closed(ok)
        assert [c.fingerprint for c in group] == ["c"]
        stale = h.store.watch_alerts(first)
        with pytest.raises(aetcd.RevisionCompactedError) as info:
            await take(stale, 1)
        assert info.value.compacted_revision == third

    run(body)


# -- the in-memory twin only ------------------------------------------------------------------


def test_memory_store_history_is_bounded() -> None:
    """MemoryStore keeps only its last `history` writes for watches; older starts are compacted."""

    async def body() -> None:
        store = MemoryStore(history=2)
        revisions = [await store.put_alert(alert(f"fp-{i}"), 0) for i in range(4)]
        watch = store.watch_alerts(revisions[1])
        groups = await take(watch, 2)
        await closed(watch)
        assert [g[0].revision for g in groups] == revisions[2:]
        with pytest.raises(aetcd.RevisionCompactedError):
            await take(store.watch_alerts(revisions[0]), 1)

    asyncio.run(body())


def test_memory_store_refuses_to_write_a_key_twice_in_one_commit() -> None:
    """Like etcd, one transaction may not write the same alert twice: ValueError, nothing written."""

    async def body() -> None:
        store = MemoryStore()
        with pytest.raises(ValueError, match="once"):
            await store.commit_batch(node(), 0, [(alert("dup"), 0), (alert("dup"), 0)])
        assert await store.get_node("node-a") is None
        assert store.revision == 1

    asyncio.run(body())
