"""Managing policies through PolicyService: clone, delete, default, assignments, history, paging.

Each test calls an in-process grpc.aio server over a MemoryStore seeded with the built-ins (the
`serving` helper of test_services.py), so status codes and messages are checked as a console
receives them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from test_services import Api, document, refused, served

from telltale.controller.memstore import MemoryStore
from telltale.controller.policies import PolicyView
from telltale.controller.store import PolicyState, Replaced
from telltale.engine import policy as policy_model
from telltale.v1 import agent_pb2, common_pb2, policy_pb2

WAIT_S = 5.0
PAIRS = 24
INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
FAILED, EXISTS = grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS


async def create(api: Api, name: str, priority: str = "P1") -> policy_pb2.Policy:
    response = await api.policies.CreatePolicy(
        policy_pb2.CreatePolicyRequest(document=document(name, priority))
    )
    return response.policy


async def assign(api: Api, application: str, policy: str, component: str = "") -> str:
    assignment = policy_pb2.PolicyAssignment(application=application, component=component, policy=policy)
    response = await api.policies.AssignPolicy(policy_pb2.AssignPolicyRequest(assignment=assignment))
    return response.previous_policy


async def delete(api: Api, name: str) -> policy_pb2.DeletePolicyResponse:
    return await api.policies.DeletePolicy(policy_pb2.DeletePolicyRequest(name=name))


async def get(api: Api, name: str, revision: int = 0) -> policy_pb2.GetPolicyResponse:
    return await api.policies.GetPolicy(policy_pb2.GetPolicyRequest(name=name, revision=revision))


async def every_page(fetch: Callable[[str], Awaitable[tuple[list[Any], str]]]) -> list[list[Any]]:
    """The pages of a listing, following next_page_token from the first page to the last."""
    pages: list[list[Any]] = []
    token = ""
    while True:
        items, token = await fetch(token)
        pages.append(items)
        if not token:
            return pages


def page(size: int, token: str = "") -> common_pb2.PageRequest:
    return common_pb2.PageRequest(page_size=size, page_token=token)


# -- clone -----------------------------------------------------------------------------------


def test_clone_copies_a_builtin_as_an_editable_policy_at_revision_one() -> None:
    """A clone of a built-in has its rules, revision 1, cloned_from set, and can be updated."""

    async def body(api: Api) -> None:
        standard = (await get(api, "Standard")).policy
        before = time.time()
        clone = (
            await api.policies.ClonePolicy(policy_pb2.ClonePolicyRequest(source="Standard", name="Mine"))
        ).policy
        assert (clone.name, clone.revision, clone.builtin, clone.cloned_from) == (
            "Mine",
            1,
            False,
            "Standard",
        )
        assert list(clone.rules) == list(standard.rules)
        assert clone.description == standard.description
        assert "127.0.0.1" in clone.updated_by
        assert clone.updated_at.seconds >= int(before)
        stored = await get(api, "Mine")
        assert stored.policy == clone
        assert "clonedFrom: Standard" in stored.document

        edit = policy_model.to_document(
            dataclasses.replace(policy_model.parse_document(stored.document), description="mine now")
        )
        updated = await api.policies.UpdatePolicy(
            policy_pb2.UpdatePolicyRequest(document=edit, expected_revision=1)
        )
        assert (updated.policy.revision, updated.policy.cloned_from) == (2, "Standard")
        assert updated.policy.description == "mine now"

        again = await api.policies.ClonePolicy(policy_pb2.ClonePolicyRequest(source="Mine", name="Mine 2"))
        assert (again.policy.revision, again.policy.cloned_from) == (1, "Mine")
        assert again.policy.description == updated.policy.description

    served(body)


@pytest.mark.parametrize(
    ("source", "name", "code", "field"),
    [
        ("Standard", "Max Alert", EXISTS, None),
        ("Nobody", "Mine", NOT_FOUND, None),
        ("", "Mine", INVALID, "source"),
        ("Standard", "", INVALID, "name"),
        ("Standard", " Mine", INVALID, "name"),
        ("Standard", "Mine/2", INVALID, "name"),
        ("Standard", "x" * 64, INVALID, "name"),
    ],
)
def test_clone_refusals(source: str, name: str, code: grpc.StatusCode, field: str | None) -> None:
    """A taken name is ALREADY_EXISTS, an unknown source NOT_FOUND, a bad name INVALID_ARGUMENT naming it."""

    async def body(api: Api) -> None:
        request = policy_pb2.ClonePolicyRequest(source=source, name=name)
        details = await refused(api.policies.ClonePolicy(request), code)
        if field:
            assert details.startswith(f"{field}:")
        listed = await api.policies.ListPolicies(policy_pb2.ListPoliciesRequest())
        assert {p.name for p in listed.policies} == {"Standard", "Max Alert"}

    served(body)


# -- delete ----------------------------------------------------------------------------------


def test_delete_removes_a_policy_and_keeps_its_history() -> None:
    """After a delete the policy is NOT_FOUND and unlisted; its past revisions are still served."""

    async def body(api: Api) -> None:
        await create(api, "Strict", "P1")
        await api.policies.UpdatePolicy(
            policy_pb2.UpdatePolicyRequest(document=document("Strict", "P3"), expected_revision=1)
        )
        assert (await delete(api, "Strict")).deleted
        await refused(get(api, "Strict"), NOT_FOUND)
        listed = await api.policies.ListPolicies(policy_pb2.ListPoliciesRequest())
        assert "Strict" not in {p.name for p in listed.policies}
        revisions = await api.policies.ListPolicyRevisions(
            policy_pb2.ListPolicyRevisionsRequest(name="Strict")
        )
        assert [r.revision for r in revisions.revisions] == [2, 1]
        two = await get(api, "Strict", revision=2)
        assert two.policy.rules[0].priority == common_pb2.PRIORITY_P3
        assert "priority: P3" in two.document
        await refused(delete(api, "Strict"), NOT_FOUND)

        # The name is free again, and its history starts over.
        await create(api, "Strict", "P2")
        revisions = await api.policies.ListPolicyRevisions(
            policy_pb2.ListPolicyRevisionsRequest(name="Strict")
        )
        assert [r.revision for r in revisions.revisions] == [1]
        await refused(get(api, "Strict", revision=2), NOT_FOUND)

    served(body)


def test_delete_is_refused_while_the_policy_is_used_and_names_the_users() -> None:
    """Built-ins, the default and assigned policies are FAILED_PRECONDITION; the message says why."""

    async def body(api: Api) -> None:
        details = await refused(delete(api, "Max Alert"), FAILED)
        assert "built in" in details
        await create(api, "Strict")
        await assign(api, "shop", "Strict")
        await assign(api, "blog", "Strict", component="api")
        await api.policies.SetDefaultPolicy(policy_pb2.SetDefaultPolicyRequest(name="Strict"))

        details = await refused(delete(api, "Strict"), FAILED)
        assert "is the default" in details
        assert "assigned to blog/api, shop." in details
        await api.policies.SetDefaultPolicy(policy_pb2.SetDefaultPolicyRequest(name="Standard"))
        details = await refused(delete(api, "Strict"), FAILED)
        assert "default" not in details
        assert details.endswith("it is assigned to blog/api, shop. First unassign it")
        await api.policies.UnassignPolicy(policy_pb2.UnassignPolicyRequest(application="shop"))
        details = await refused(delete(api, "Strict"), FAILED)
        assert "assigned to blog/api." in details
        await api.policies.UnassignPolicy(
            policy_pb2.UnassignPolicyRequest(application="blog", component="api")
        )
        assert (await delete(api, "Strict")).deleted
        details = await refused(delete(api, ""), INVALID)
        assert details.startswith("name:")

    served(body)


def test_a_refusal_names_a_few_users_and_counts_the_rest() -> None:
    """A policy assigned to many applications is refused with the first ten named and the rest counted."""

    async def body(api: Api) -> None:
        await create(api, "Strict")
        for i in range(13):
            await assign(api, f"app-{i:02d}", "Strict")
        details = await refused(delete(api, "Strict"), FAILED)
        assert "app-00, app-01" in details
        assert "app-09 and 3 more" in details
        assert "app-10" not in details

    served(body)


def test_an_assignment_made_during_a_delete_makes_the_delete_look_again() -> None:
    """When an assignment commits between the delete's check and its write, the delete is refused."""

    class AssignFirst(MemoryStore):
        async def delete_policy(self, name: str, expected_state_revision: int) -> int:
            await self.assign_policy("late-app", "", name)
            return await super().delete_policy(name, expected_state_revision)

    async def body(api: Api) -> None:
        await create(api, "Strict")
        details = await refused(delete(api, "Strict"), FAILED)
        assert "late-app" in details
        assert (await get(api, "Strict")).policy.name == "Strict"

    served(body, AssignFirst())


def test_a_delete_made_during_an_assignment_makes_the_assignment_not_found() -> None:
    """When the policy is deleted before an assignment commits, the assignment is NOT_FOUND."""

    class DeleteFirst(MemoryStore):
        async def assign_policy(self, application: str, component: str, policy: str) -> Replaced:
            await self.delete_policy(policy, (await self.policy_state()).revision)
            return await super().assign_policy(application, component, policy)

    async def body(api: Api) -> None:
        await create(api, "Strict")
        details = await refused(assign(api, "shop", "Strict"), NOT_FOUND)
        assert details.startswith("assignment.policy:")
        state = await api.store.policy_state()
        assert "Strict" not in state.policies
        assert state.assignments == {}

    served(body, DeleteFirst())


def test_a_delete_that_keeps_losing_races_is_aborted() -> None:
    """When the policy state changes before every attempt, DeletePolicy gives up with ABORTED."""

    class Busy(MemoryStore):
        async def delete_policy(self, name: str, expected_state_revision: int) -> int:
            await self.set_default_policy("Standard")  # any change at all moves the state
            return await super().delete_policy(name, expected_state_revision)

    async def body(api: Api) -> None:
        await create(api, "Strict")
        details = await refused(delete(api, "Strict"), grpc.StatusCode.ABORTED)
        assert "retry" in details
        assert (await get(api, "Strict")).policy.revision == 1

    served(body, Busy())


class Jittery(MemoryStore):
    """A MemoryStore whose reads and policy writes take a random time of up to a few milliseconds,
    as round trips to etcd do, so concurrent requests interleave in varying orders.

    An assignment is one round trip and a delete two (read, then write): assignments are given
    the longer delays so that either can be first."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self._random = random.Random(seed)

    async def _jitter(self, up_to_ms: float = 0.5) -> None:
        await asyncio.sleep(self._random.random() * up_to_ms / 1000)

    async def policy_state(self) -> PolicyState:
        await self._jitter()
        return await super().policy_state()

    async def delete_policy(self, name: str, expected_state_revision: int) -> int:
        await self._jitter()
        return await super().delete_policy(name, expected_state_revision)

    async def assign_policy(self, application: str, component: str, policy: str) -> Replaced:
        await self._jitter(up_to_ms=3.0)
        return await super().assign_policy(application, component, policy)


def test_deletes_and_assignments_racing_over_the_api_never_both_win() -> None:
    """Deletes and assignments of the same policies sent at once: in each pair exactly one wins (the
    loser is FAILED_PRECONDITION or NOT_FOUND), and no assignment ever names a missing policy."""

    async def body(api: Api) -> None:
        names = [f"Race {i}" for i in range(PAIRS)]
        for name in names:
            await create(api, name)
        results = await asyncio.gather(
            *(
                asyncio.gather(delete(api, name), assign(api, f"app-{i}", name), return_exceptions=True)
                for i, name in enumerate(names)
            )
        )
        winners = []
        for name, (deleted, assigned) in zip(names, results, strict=True):
            if isinstance(deleted, grpc.aio.AioRpcError):
                assert deleted.code() == FAILED, deleted.details()
                assert isinstance(assigned, str), (name, assigned)
                winners.append("assign")
            else:
                assert isinstance(deleted, policy_pb2.DeletePolicyResponse), (name, deleted)
                assert isinstance(assigned, grpc.aio.AioRpcError), (name, assigned)
                assert assigned.code() == NOT_FOUND, assigned.details()
                winners.append("delete")
        state = await api.store.policy_state()
        assert all(policy in state.policies for policy in state.assignments.values())
        assert len(state.assignments) == winners.count("assign")
        assert set(winners) == {"assign", "delete"}, "both orders were exercised"

    served(body, Jittery(seed=4))


# -- default and assignments -----------------------------------------------------------------


def test_set_default_returns_the_previous_default() -> None:
    """SetDefaultPolicy answers the former default; an unknown or empty name changes nothing."""

    async def body(api: Api) -> None:
        changed = await api.policies.SetDefaultPolicy(policy_pb2.SetDefaultPolicyRequest(name="Max Alert"))
        assert changed.previous == "Standard"
        listed = await api.policies.ListPolicies(policy_pb2.ListPoliciesRequest())
        assert listed.default_policy == "Max Alert"
        await refused(
            api.policies.SetDefaultPolicy(policy_pb2.SetDefaultPolicyRequest(name="Nobody")), NOT_FOUND
        )
        details = await refused(
            api.policies.SetDefaultPolicy(policy_pb2.SetDefaultPolicyRequest(name=" ")), INVALID
        )
        assert details.startswith("name:")
        assert (await api.store.policy_state()).default_policy == "Max Alert"

    served(body)


def test_assign_returns_the_previous_policy_and_unassign_says_whether_it_removed_one() -> None:
    """Assignments to an application and to one component are separate; each reports what it replaced."""

    async def body(api: Api) -> None:
        await create(api, "Strict")
        assert await assign(api, "shop", "Strict") == ""
        assert await assign(api, "shop", "Max Alert", component="api") == ""
        assert await assign(api, "shop", "Standard") == "Strict"
        state = await api.store.policy_state()
        assert state.assignments == {("shop", ""): "Standard", ("shop", "api"): "Max Alert"}
        unassign = api.policies.UnassignPolicy
        removed = await unassign(policy_pb2.UnassignPolicyRequest(application="shop", component="api"))
        assert removed.removed
        again = await unassign(policy_pb2.UnassignPolicyRequest(application="shop", component="api"))
        assert not again.removed
        assert (await api.store.policy_state()).assignments == {("shop", ""): "Standard"}
        details = await refused(assign(api, "shop", "Nobody"), NOT_FOUND)
        assert details.startswith("assignment.policy:")

    served(body)


@pytest.mark.parametrize(
    ("application", "component", "policy", "field"),
    [
        ("", "", "Standard", "assignment.application"),
        ("-shop", "", "Standard", "assignment.application"),
        ("shop/api", "", "Standard", "assignment.application"),
        ("a" * 64, "", "Standard", "assignment.application"),
        ("shop", "api server", "Standard", "assignment.component"),
        ("shop", ".api", "Standard", "assignment.component"),
        ("shop", "", "", "assignment.policy"),
    ],
)
def test_assign_refuses_bad_names_naming_the_field(
    application: str, component: str, policy: str, field: str
) -> None:
    """Application and component names are 1-63 letters, digits, '.', '_', '-' starting alphanumeric."""

    async def body(api: Api) -> None:
        details = await refused(assign(api, application, policy, component), INVALID)
        assert details.startswith(f"{field}:")
        assert (await api.store.policy_state()).assignments == {}

    served(body)


@pytest.mark.parametrize(
    ("application", "component", "field"),
    [("", "", "application"), ("shop!", "", "application"), ("shop", "a/b", "component")],
)
def test_unassign_refuses_bad_names_naming_the_field(application: str, component: str, field: str) -> None:
    """UnassignPolicy checks names as AssignPolicy does."""

    async def body(api: Api) -> None:
        request = policy_pb2.UnassignPolicyRequest(application=application, component=component)
        details = await refused(api.policies.UnassignPolicy(request), INVALID)
        assert details.startswith(f"{field}:")

    served(body)


def test_list_assignments_filters_by_policy_and_pages_each_once() -> None:
    """ListAssignments orders by application then component, filters by policy and pages."""

    async def body(api: Api) -> None:
        await create(api, "Strict")
        expected = []
        for i in range(7):
            policy = "Strict" if i % 2 else "Max Alert"
            await assign(api, f"app-{i}", policy)
            expected.append((f"app-{i}", "", policy))
        await assign(api, "app-1", "Strict", component="api")
        expected.insert(2, ("app-1", "api", "Strict"))

        async def fetch(policy: str, token: str) -> tuple[list[Any], str]:
            response = await api.policies.ListAssignments(
                policy_pb2.ListAssignmentsRequest(policy=policy, page=page(3, token))
            )
            return list(response.assignments), response.page.next_page_token

        pages = await every_page(lambda token: fetch("", token))
        assert [len(p) for p in pages] == [3, 3, 2]
        listed = [(a.application, a.component, a.policy) for p in pages for a in p]
        assert listed == expected
        strict = [a for p in await every_page(lambda token: fetch("Strict", token)) for a in p]
        assert [(a.application, a.component) for a in strict] == [
            ("app-1", ""),
            ("app-1", "api"),
            ("app-3", ""),
            ("app-5", ""),
        ]
        details = await refused(
            api.policies.ListAssignments(policy_pb2.ListAssignmentsRequest(policy="Nobody")), NOT_FOUND
        )
        assert details.startswith("policy:")
        bad = policy_pb2.ListAssignmentsRequest(page=page(3, "app-1"))
        details = await refused(api.policies.ListAssignments(bad), INVALID)
        assert details.startswith("page.page_token:")

    served(body)


# -- history and paging ----------------------------------------------------------------------


def test_revisions_are_listed_newest_first_with_who_and_when_and_each_is_served() -> None:
    """ListPolicyRevisions pages newest first with updated_at/by; GetPolicy serves any revision."""

    async def body(api: Api) -> None:
        before = time.time()
        await create(api, "Strict", "P1")
        for revision, priority in enumerate(["P2", "P3", "P4", "P1"], start=1):
            await api.policies.UpdatePolicy(
                policy_pb2.UpdatePolicyRequest(
                    document=document("Strict", priority), expected_revision=revision
                )
            )

        async def fetch(token: str) -> tuple[list[Any], str]:
            response = await api.policies.ListPolicyRevisions(
                policy_pb2.ListPolicyRevisionsRequest(name="Strict", page=page(2, token))
            )
            return list(response.revisions), response.page.next_page_token

        pages = await every_page(fetch)
        assert [[r.revision for r in p] for p in pages] == [[5, 4], [3, 2], [1]]
        revisions = [r for p in pages for r in p]
        assert all("127.0.0.1" in r.updated_by for r in revisions)
        assert all(r.updated_at.seconds >= int(before) for r in revisions)
        times = [r.updated_at.ToNanoseconds() for r in revisions]
        assert times == sorted(times, reverse=True)

        priorities = {1: "P1", 2: "P2", 3: "P3", 4: "P4", 5: "P1"}
        for revision, priority in priorities.items():
            got = await get(api, "Strict", revision=revision)
            assert got.policy.revision == revision
            assert f"priority: {priority}" in got.document
        assert (await get(api, "Strict", revision=5)) == (await get(api, "Strict"))
        details = await refused(get(api, "Strict", revision=6), NOT_FOUND)
        assert "revision 6" in details
        details = await refused(get(api, "Strict", revision=-1), INVALID)
        assert details.startswith("revision:")
        await refused(get(api, "Nobody", revision=1), NOT_FOUND)

    served(body)


def test_a_stored_revision_the_engine_no_longer_accepts_is_served_without_a_document() -> None:
    """A past revision naming an alert type that is gone is still returned, with an empty document."""

    async def body(api: Api) -> None:
        current = await create(api, "Strict")
        old = policy_pb2.Policy()
        old.CopyFrom(current)
        old.rules[0].alert_type = "process.withdrawn_type"
        stored = await api.store.get_policy("Strict")
        assert stored is not None
        old.revision = 2
        await api.store.update_policy(old, stored.mod_revision)
        got = await get(api, "Strict", revision=2)
        assert (got.policy.rules[0].alert_type, got.document) == ("process.withdrawn_type", "")
        assert "process.shell_launched" in (await get(api, "Strict", revision=1)).document

    served(body)


def test_list_revisions_refusals() -> None:
    """An unknown policy is NOT_FOUND; a missing name or a foreign page token is INVALID_ARGUMENT."""

    async def body(api: Api) -> None:
        revisions = api.policies.ListPolicyRevisions
        await refused(revisions(policy_pb2.ListPolicyRevisionsRequest(name="Nobody")), NOT_FOUND)
        details = await refused(revisions(policy_pb2.ListPolicyRevisionsRequest()), INVALID)
        assert details.startswith("name:")
        for token in ("3", "cmV2aXNpb25zOng=", "cG9saWNpZXM6MQ=="):  # "revisions:x", "policies:1"
            request = policy_pb2.ListPolicyRevisionsRequest(name="Standard", page=page(1, token))
            details = await refused(revisions(request), INVALID)
            assert details.startswith("page.page_token:")
        builtin_history = await revisions(policy_pb2.ListPolicyRevisionsRequest(name="Standard"))
        assert [r.revision for r in builtin_history.revisions] == [1]

    served(body)


def test_list_policies_pages_in_name_order_ignoring_case() -> None:
    """ListPolicies returns each policy once across pages, case-insensitively ordered, with the default."""

    async def body(api: Api) -> None:
        for name in ("alpha", "Beta", "beta", "Zed", "max"):
            await create(api, name)

        async def fetch(token: str) -> tuple[list[Any], str]:
            response = await api.policies.ListPolicies(policy_pb2.ListPoliciesRequest(page=page(2, token)))
            assert response.default_policy == "Standard"
            return [p.name for p in response.policies], response.page.next_page_token

        pages = await every_page(fetch)
        assert [len(p) for p in pages] == [2, 2, 2, 1]
        assert [n for p in pages for n in p] == [
            "alpha",
            "Beta",
            "beta",
            "max",
            "Max Alert",
            "Standard",
            "Zed",
        ]
        bad = policy_pb2.ListPoliciesRequest(page=page(2, "alpha"))
        details = await refused(api.policies.ListPolicies(bad), INVALID)
        assert details.startswith("page.page_token:")

    served(body)


# -- agents are told -------------------------------------------------------------------------


def test_every_change_reaches_the_policy_view_agents_are_served_from() -> None:
    """Clone, default, assign, unassign and delete each move the policy-state revision, and a
    following PolicyView pushes an update that shows the change."""

    async def body(api: Api) -> None:
        view = PolicyView(api.store)
        await view.load()
        following = asyncio.create_task(view.follow())

        async def pushed(change: Awaitable[object]) -> agent_pb2.PolicyUpdate:
            before = view.revision
            await change
            target = (await api.store.policy_state()).revision
            assert target > before, "the change moved the policy-state revision"
            deadline = time.monotonic() + WAIT_S
            while view.revision < target:
                assert time.monotonic() < deadline, "the view did not follow the change"
                async with view.changed:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(view.changed.wait(), 0.1)
            return view.update_message()

        try:
            clone = policy_pb2.ClonePolicyRequest(source="Standard", name="Mine")
            update = await pushed(api.policies.ClonePolicy(clone))
            assert "Mine" in {p.name for p in update.policies}
            update = await pushed(
                api.policies.SetDefaultPolicy(policy_pb2.SetDefaultPolicyRequest(name="Mine"))
            )
            assert update.default_policy == "Mine"
            update = await pushed(assign(api, "shop", "Mine"))
            assert [(a.application, a.policy) for a in update.assignments] == [("shop", "Mine")]
            update = await pushed(
                api.policies.UnassignPolicy(policy_pb2.UnassignPolicyRequest(application="shop"))
            )
            assert list(update.assignments) == []
            blocking = (
                "apiVersion: telltale.dev/v1\nkind: AlertPolicy\nmetadata:\n  name: Fence\nspec:\n  rules:\n"
                "    network.blocklisted_destination:\n      action: block\n"
                "      params:\n        networks: [198.51.100.0/25, 198.51.100.128/25]\n"
            )
            update = await pushed(
                api.policies.CreatePolicy(policy_pb2.CreatePolicyRequest(document=blocking))
            )
            assert [(e.policy, list(e.networks)) for e in update.enforcement] == [
                ("Fence", ["198.51.100.0/24"])
            ], "a policy with a block rule comes with the networks agents refuse"
            await pushed(api.policies.SetDefaultPolicy(policy_pb2.SetDefaultPolicyRequest(name="Standard")))
            update = await pushed(delete(api, "Mine"))
            assert "Mine" not in {p.name for p in update.policies}
            assert update.revision == view.revision
        finally:
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following

    served(body)
