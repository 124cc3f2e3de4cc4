"""The Store contract for managing policies: delete, default, assignments and history.

Every test runs against MemoryStore and against EtcdStore on an embedded etcd started for this
module (the fixtures are in conftest.py).
"""

from __future__ import annotations

import asyncio

import pytest
from storekit import Harness, Run, builtins, closed, custom_policy, take

from telltale.controller.store import Absent, Conflict, Replaced
from telltale.engine import builtin

# -- delete ----------------------------------------------------------------------------------


def test_delete_policy_removes_it_and_keeps_its_history(run: Run) -> None:
    """A delete at the current state revision removes the policy; its revisions stay readable."""

    async def body(h: Harness) -> None:
        first = await h.store.create_policy(custom_policy("Strict"))
        await h.store.update_policy(custom_policy("Strict", "edited", revision=2), first)
        await h.store.create_policy(custom_policy("Other"))
        state = await h.store.policy_state()
        revision = await h.store.delete_policy("Strict", state.revision)
        after = await h.store.policy_state()
        assert after.revision == revision > state.revision
        assert set(after.policies) == {"Other"}
        assert await h.store.get_policy("Strict") is None
        kept = await h.store.list_policy_revisions("Strict")
        assert [(p.revision, p.description) for p in kept] == [(2, "edited"), (1, "a test policy")]
        one = await h.store.get_policy_revision("Strict", 1)
        assert one is not None
        assert one.description == "a test policy"

    run(body)


def test_delete_policy_is_a_compare_and_swap_on_the_policy_state(run: Run) -> None:
    """Any policy-state change after the caller's read makes the delete a Conflict that writes nothing."""

    async def body(h: Harness) -> None:
        await h.store.seed_policies(builtins(), builtin.DEFAULT_POLICY)
        await h.store.create_policy(custom_policy("Strict"))
        read = await h.store.policy_state()
        for change in (
            h.store.create_policy(custom_policy("Unrelated")),
            h.store.assign_policy("shop", "", "Strict"),
            h.store.set_default_policy("Strict"),
        ):
            await change
            with pytest.raises(Conflict):
                await h.store.delete_policy("Strict", read.revision)
            read = await h.store.policy_state()
            assert "Strict" in read.policies
        with pytest.raises(Absent):
            await h.store.delete_policy("Nobody", read.revision)
        assert (await h.store.policy_state()).revision == read.revision

    run(body)


def test_a_delete_racing_an_assignment_lets_exactly_one_win(run: Run) -> None:
    """Started together from one read, either the assignment or the delete commits, never both.

    Which one wins is up to the scheduler (and etcd); the assignment-first order is forced in
    test_delete_policy_is_a_compare_and_swap_on_the_policy_state."""

    async def body(h: Harness) -> None:
        for i in range(6):
            name = f"Race {i}"
            await h.store.create_policy(custom_policy(name))
            read = await h.store.policy_state()
            deleted, assigned = await asyncio.gather(
                h.store.delete_policy(name, read.revision),
                h.store.assign_policy(f"app-{i}", "", name),
                return_exceptions=True,
            )
            assert isinstance(deleted, int | Conflict), deleted
            assert isinstance(assigned, Replaced | Absent), assigned
            assert isinstance(deleted, int) != isinstance(assigned, Replaced), (deleted, assigned)
            state = await h.store.policy_state()
            if isinstance(deleted, int):
                assert name not in state.policies
                assert (f"app-{i}", "") not in state.assignments
            else:
                assert state.policies[name].name == name
                assert state.assignments[(f"app-{i}", "")] == name

    run(body)


def test_creating_a_deleted_name_again_starts_a_new_history(run: Run) -> None:
    """A new policy under a deleted policy's name has only its own history; other names keep theirs."""

    async def body(h: Harness) -> None:
        first = await h.store.create_policy(custom_policy("Strict"))
        second = await h.store.update_policy(custom_policy("Strict", "two", revision=2), first)
        await h.store.update_policy(custom_policy("Strict", "three", revision=3), second)
        await h.store.create_policy(custom_policy("Strict x"))  # shares the name's first letters
        await h.store.delete_policy("Strict", (await h.store.policy_state()).revision)
        await h.store.create_policy(custom_policy("Strict", "reborn"))
        history = await h.store.list_policy_revisions("Strict")
        assert [(p.revision, p.description) for p in history] == [(1, "reborn")]
        assert await h.store.get_policy_revision("Strict", 3) is None
        assert [p.revision for p in await h.store.list_policy_revisions("Strict x")] == [1]

    run(body)


# -- default and assignments -----------------------------------------------------------------


def test_set_default_policy_returns_the_former_default(run: Run) -> None:
    """Setting the default returns the previous one and moves the state; an unknown policy is Absent."""

    async def body(h: Harness) -> None:
        await h.store.create_policy(custom_policy("Strict"))
        first = await h.store.set_default_policy("Strict")
        assert first.previous == ""
        await h.store.seed_policies(builtins(), builtin.DEFAULT_POLICY)  # keeps the default there is
        second = await h.store.set_default_policy("Standard")
        assert second == Replaced("Strict", second.revision)
        state = await h.store.policy_state()
        assert (state.default_policy, state.revision) == ("Standard", second.revision)
        assert second.revision > first.revision
        with pytest.raises(Absent):
            await h.store.set_default_policy("Nobody")
        after = await h.store.policy_state()
        assert (after.default_policy, after.revision) == ("Standard", state.revision)

    run(body)


def test_assignments_replace_and_remove_with_the_former_policy(run: Run) -> None:
    """assign returns the policy it replaced, unassign the one it removed; both move the state."""

    async def body(h: Harness) -> None:
        await h.store.create_policy(custom_policy("A"))
        await h.store.create_policy(custom_policy("B"))
        whole = await h.store.assign_policy("shop", "", "A")
        api = await h.store.assign_policy("shop", "api", "A")
        replaced = await h.store.assign_policy("shop", "api", "B")
        assert (whole.previous, api.previous, replaced.previous) == ("", "", "A")
        assert whole.revision < api.revision < replaced.revision
        state = await h.store.policy_state()
        assert state.assignments == {("shop", ""): "A", ("shop", "api"): "B"}
        assert state.revision == replaced.revision

        removed = await h.store.unassign_policy("shop", "api")
        assert removed.previous == "B"
        assert removed.revision == (await h.store.policy_state()).revision > replaced.revision
        nothing = await h.store.unassign_policy("shop", "api")
        assert nothing == Replaced("", 0)
        assert (await h.store.policy_state()).assignments == {("shop", ""): "A"}
        assert (await h.store.policy_state()).revision == removed.revision

        with pytest.raises(Absent):
            await h.store.assign_policy("blog", "", "Nobody")
        assert ("blog", "") not in (await h.store.policy_state()).assignments

    run(body)


def test_assignment_names_are_encoded_inside_keys(run: Run) -> None:
    """Application and component names with '/', '%' and spaces round-trip through the keys."""

    async def body(h: Harness) -> None:
        await h.store.create_policy(custom_policy("A"))
        await h.store.assign_policy("a/b %2F", "c/d", "A")
        await h.store.assign_policy("a", "b/c", "A")
        assert (await h.store.policy_state()).assignments == {("a/b %2F", "c/d"): "A", ("a", "b/c"): "A"}
        assert (await h.store.unassign_policy("a/b %2F", "c/d")).previous == "A"
        assert (await h.store.policy_state()).assignments == {("a", "b/c"): "A"}

    run(body)


# -- history ---------------------------------------------------------------------------------


def test_policy_history_pages_newest_first(run: Run) -> None:
    """list_policy_revisions gives revisions newest first, below `before`, at most `limit`."""

    async def body(h: Harness) -> None:
        mod = await h.store.create_policy(custom_policy("Strict", "r1"))
        for revision in range(2, 8):
            mod = await h.store.update_policy(custom_policy("Strict", f"r{revision}", revision), mod)
        await h.store.create_policy(custom_policy("Strict2"))
        every = await h.store.list_policy_revisions("Strict")
        assert [p.revision for p in every] == [7, 6, 5, 4, 3, 2, 1]
        assert [p.description for p in every] == [f"r{r}" for r in range(7, 0, -1)]
        page = await h.store.list_policy_revisions("Strict", limit=3)
        assert [p.revision for p in page] == [7, 6, 5]
        page = await h.store.list_policy_revisions("Strict", before=5, limit=3)
        assert [p.revision for p in page] == [4, 3, 2]
        page = await h.store.list_policy_revisions("Strict", before=2, limit=3)
        assert [p.revision for p in page] == [1]
        assert await h.store.list_policy_revisions("Strict", before=1) == []
        assert await h.store.list_policy_revisions("Nobody") == []

        four = await h.store.get_policy_revision("Strict", 4)
        assert four is not None
        assert (four.name, four.revision, four.description) == ("Strict", 4, "r4")
        for missing in (0, -1, 8):
            assert await h.store.get_policy_revision("Strict", missing) is None
        assert await h.store.get_policy_revision("Nobody", 1) is None

    run(body)


def test_every_policy_management_write_is_watched(run: Run) -> None:
    """Default, assign, unassign and delete each move the policy-state revision and reach a watch."""

    async def body(h: Harness) -> None:
        await h.store.create_policy(custom_policy("A"))
        start = (await h.store.policy_state()).revision
        watch = h.store.watch_policy_state(start)
        revisions = [
            (await h.store.set_default_policy("A")).revision,
            (await h.store.create_policy(custom_policy("B"))),
            (await h.store.assign_policy("shop", "", "B")).revision,
            (await h.store.unassign_policy("shop", "")).revision,
        ]
        revisions.append(await h.store.delete_policy("B", (await h.store.policy_state()).revision))
        assert revisions == sorted(set(revisions))
        assert revisions[0] > start
        assert (await h.store.policy_state()).revision == revisions[-1]
        seen: list[int] = []
        while not seen or seen[-1] < revisions[-1]:
            (revision,) = await take(watch, 1)
            if not seen or revision != seen[-1]:
                seen.append(revision)
        await closed(watch)
        assert seen == revisions

    run(body)
