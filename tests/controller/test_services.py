"""The alert, policy and catalog services over gRPC in-process, on the in-memory store.

Each test starts a grpc.aio server on a free loopback port with the services over a MemoryStore
seeded with the built-in policies (as the controller does at startup), and calls it through the
generated client stubs, so status codes and messages are checked as a console receives them.
Managing policies (clone, delete, default, assignments, history) is in test_policy_service.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import typing
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from telltale.controller.alert_service import AlertService
from telltale.controller.catalog_service import CatalogService
from telltale.controller.memstore import MemoryStore
from telltale.controller.policies import PolicyView
from telltale.controller.policy_service import PolicyService
from telltale.engine import builtin
from telltale.engine import policy as policy_model
from telltale.engine.catalog import CATALOG
from telltale.v1 import (
    alert_pb2,
    alert_pb2_grpc,
    catalog_pb2,
    catalog_pb2_grpc,
    common_pb2,
    inventory_pb2,
    policy_pb2,
    policy_pb2_grpc,
)

WAIT_S = 5.0
NS = 1_000_000_000


@dataclass
class Api:
    """The store behind the server, and client stubs connected to it."""

    store: MemoryStore
    alerts: alert_pb2_grpc.AlertServiceStub
    policies: policy_pb2_grpc.PolicyServiceStub
    catalog: catalog_pb2_grpc.CatalogServiceStub


@contextlib.asynccontextmanager
async def serving(store: MemoryStore | None = None) -> AsyncIterator[Api]:
    """A server with the three services over `store` (seeded with the built-ins), and its client."""
    store = store or MemoryStore()
    await store.seed_policies(
        [policy_model.to_proto(p) for p in builtin.load_builtin_policies().values()], builtin.DEFAULT_POLICY
    )
    view = PolicyView(store)
    await view.load()
    assert set(view.policy_set.policies) == {"Standard", "Max Alert"}
    server = grpc.aio.server()
    alert_pb2_grpc.add_AlertServiceServicer_to_server(AlertService(store), server)
    policy_pb2_grpc.add_PolicyServiceServicer_to_server(PolicyService(store), server)
    catalog_pb2_grpc.add_CatalogServiceServicer_to_server(CatalogService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield Api(
                store,
                alert_pb2_grpc.AlertServiceStub(channel),
                policy_pb2_grpc.PolicyServiceStub(channel),
                catalog_pb2_grpc.CatalogServiceStub(channel),
            )
    finally:
        await server.stop(None)


def served(body: Callable[[Api], Awaitable[None]], store: MemoryStore | None = None) -> None:
    """Run `body` against a fresh server."""

    async def main() -> None:
        async with serving(store) as api:
            await body(api)

    asyncio.run(main())


async def refused(call: Awaitable[Any], code: grpc.StatusCode) -> str:
    """Await an RPC that must fail with `code`; return its details."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    return str(info.value.details())


def alert(
    fingerprint: str, *, seconds: int = 1_700_000_000, application: str = "shop", occurrences: int = 1
) -> alert_pb2.Alert:
    return alert_pb2.Alert(
        fingerprint=fingerprint,
        alert_type="process.shell_launched",
        category=common_pb2.CATEGORY_PROCESS,
        priority=common_pb2.PRIORITY_P2,
        application=application,
        last_seen=Timestamp(seconds=seconds),
        occurrences=occurrences,
        state=alert_pb2.ALERT_STATE_OPEN,
    )


def document(name: str, priority: str = "P1", description: str = "a test policy") -> str:
    return f"""
apiVersion: telltale.dev/v1
kind: AlertPolicy
metadata:
  name: {name}
  description: {description}
spec:
  rules:
    process.shell_launched:
      priority: {priority}
"""


async def next_message(call: Any) -> alert_pb2.WatchAlertsResponse:
    """The next message of a WatchAlerts call, failing the test if none arrives in time."""
    message = await asyncio.wait_for(call.read(), WAIT_S)
    assert message is not grpc.aio.EOF, "the watch ended"
    assert isinstance(message, alert_pb2.WatchAlertsResponse)
    return message


def changes(message: alert_pb2.WatchAlertsResponse) -> list[tuple[int, str, int]]:
    return [(c.kind, c.alert.fingerprint, c.alert.occurrences) for c in message.changes]


CREATED, UPDATED = alert_pb2.ALERT_CHANGE_KIND_CREATED, alert_pb2.ALERT_CHANGE_KIND_UPDATED


# -- errors ----------------------------------------------------------------------------------


def test_an_empty_fingerprint_is_an_invalid_argument_naming_the_field() -> None:
    """GetAlert and UpdateAlertState without a fingerprint answer INVALID_ARGUMENT naming it."""

    async def body(api: Api) -> None:
        details = await refused(
            api.alerts.GetAlert(alert_pb2.GetAlertRequest()), grpc.StatusCode.INVALID_ARGUMENT
        )
        assert details.startswith("fingerprint:")
        update = alert_pb2.UpdateAlertStateRequest(fingerprint="  ", state=alert_pb2.ALERT_STATE_ACKNOWLEDGED)
        details = await refused(api.alerts.UpdateAlertState(update), grpc.StatusCode.INVALID_ARGUMENT)
        assert details.startswith("fingerprint:")

    served(body)


@pytest.mark.parametrize("token", ["not base64!", "bm8tY29sb24", "eDpmcA=="])
def test_a_page_token_the_server_did_not_issue_is_an_invalid_argument(token: str) -> None:
    """A malformed or foreign page token answers INVALID_ARGUMENT naming page.page_token."""

    async def body(api: Api) -> None:
        request = alert_pb2.ListAlertsRequest(page=common_pb2.PageRequest(page_token=token))
        details = await refused(api.alerts.ListAlerts(request), grpc.StatusCode.INVALID_ARGUMENT)
        assert details.startswith("page.page_token:")

    served(body)


def test_a_policy_document_with_problems_names_every_field() -> None:
    """Creating a policy from a document with several problems lists every field path in the error."""
    bad = """
apiVersion: telltale.dev/v1
kind: AlertPolicy
metadata:
  name: " bad name"
spec:
  rules:
    process.shell_launched:
      priority: P9
      params:
        shells: [sh, 3]
    process.no_such_type:
      enabled: true
"""

    async def body(api: Api) -> None:
        details = await refused(
            api.policies.CreatePolicy(policy_pb2.CreatePolicyRequest(document=bad)),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        for field in (
            "metadata.name",
            "spec.rules.process.shell_launched.priority",
            "spec.rules.process.shell_launched.params.shells[1]",
            "spec.rules.process.no_such_type",
        ):
            assert f"{field}: " in details
        one_problem = document("Fine", priority="P7")
        details = await refused(
            api.policies.CreatePolicy(policy_pb2.CreatePolicyRequest(document=one_problem)),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert details.startswith("spec.rules.process.shell_launched.priority: unknown priority 'P7'")
        listed = await api.policies.ListPolicies(policy_pb2.ListPoliciesRequest())
        assert {p.name for p in listed.policies} == {"Standard", "Max Alert"}

    served(body)


def test_validate_policy_returns_the_problems_instead_of_failing() -> None:
    """ValidatePolicy answers OK with one violation per problem, or none for a valid document."""

    async def body(api: Api) -> None:
        bad = await api.policies.ValidatePolicy(
            policy_pb2.ValidatePolicyRequest(document=document("X", "P0"))
        )
        assert [v.field for v in bad.violations] == ["spec.rules.process.shell_launched.priority"]
        good = await api.policies.ValidatePolicy(policy_pb2.ValidatePolicyRequest(document=document("X")))
        assert list(good.violations) == []

    served(body)


def test_creating_a_policy_whose_name_exists_is_already_exists() -> None:
    """A second policy of the same name, or one named like a built-in, answers ALREADY_EXISTS."""

    async def body(api: Api) -> None:
        created = await api.policies.CreatePolicy(policy_pb2.CreatePolicyRequest(document=document("Strict")))
        assert (created.policy.name, created.policy.revision, created.policy.builtin) == ("Strict", 1, False)
        await refused(
            api.policies.CreatePolicy(policy_pb2.CreatePolicyRequest(document=document("Strict", "P3"))),
            grpc.StatusCode.ALREADY_EXISTS,
        )
        await refused(
            api.policies.CreatePolicy(policy_pb2.CreatePolicyRequest(document=document("Standard"))),
            grpc.StatusCode.ALREADY_EXISTS,
        )
        got = await api.policies.GetPolicy(policy_pb2.GetPolicyRequest(name="Strict"))
        assert got.policy.rules[0].priority == common_pb2.PRIORITY_P1
        standard = await api.policies.GetPolicy(policy_pb2.GetPolicyRequest(name="Standard"))
        assert standard.policy.builtin

    served(body)


def test_updating_a_builtin_policy_is_a_failed_precondition() -> None:
    """Built-in policies are read-only: UpdatePolicy answers FAILED_PRECONDITION and changes nothing."""

    async def body(api: Api) -> None:
        before = await api.policies.GetPolicy(policy_pb2.GetPolicyRequest(name="Standard"))
        request = policy_pb2.UpdatePolicyRequest(document=document("Standard"), expected_revision=1)
        details = await refused(api.policies.UpdatePolicy(request), grpc.StatusCode.FAILED_PRECONDITION)
        assert "built in" in details
        after = await api.policies.GetPolicy(policy_pb2.GetPolicyRequest(name="Standard"))
        assert after == before

    served(body)


def test_updating_from_a_stale_revision_is_a_failed_precondition() -> None:
    """An update naming a revision that is no longer current answers FAILED_PRECONDITION."""

    async def body(api: Api) -> None:
        await api.policies.CreatePolicy(policy_pb2.CreatePolicyRequest(document=document("Strict")))
        updated = await api.policies.UpdatePolicy(
            policy_pb2.UpdatePolicyRequest(document=document("Strict", "P2"), expected_revision=1)
        )
        assert updated.policy.revision == 2
        details = await refused(
            api.policies.UpdatePolicy(
                policy_pb2.UpdatePolicyRequest(document=document("Strict", "P4"), expected_revision=1)
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
        assert "revision 2" in details
        current = await api.policies.GetPolicy(policy_pb2.GetPolicyRequest(name="Strict"))
        assert (current.policy.revision, current.policy.rules[0].priority) == (2, common_pb2.PRIORITY_P2)
        await refused(
            api.policies.UpdatePolicy(policy_pb2.UpdatePolicyRequest(document=document("Strict", "P4"))),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        await refused(
            api.policies.UpdatePolicy(
                policy_pb2.UpdatePolicyRequest(document=document("Nobody"), expected_revision=1)
            ),
            grpc.StatusCode.NOT_FOUND,
        )

    served(body)


def test_an_update_racing_another_is_a_failed_precondition_not_a_lost_update() -> None:
    """When the policy changes between the service's read and its write, the write is refused."""

    class Racing(MemoryStore):
        async def update_policy(self, policy: policy_pb2.Policy, expected_mod_revision: int) -> int:
            rival = policy_pb2.Policy()
            rival.CopyFrom(policy)
            rival.description = "written by a rival"
            await super().update_policy(rival, expected_mod_revision)
            return await super().update_policy(policy, expected_mod_revision)

    async def body(api: Api) -> None:
        await api.policies.CreatePolicy(policy_pb2.CreatePolicyRequest(document=document("Strict")))
        request = policy_pb2.UpdatePolicyRequest(document=document("Strict", "P2"), expected_revision=1)
        await refused(api.policies.UpdatePolicy(request), grpc.StatusCode.FAILED_PRECONDITION)
        current = await api.policies.GetPolicy(policy_pb2.GetPolicyRequest(name="Strict"))
        assert current.policy.description == "written by a rival"

    served(body, Racing())


def test_a_missing_alert_is_not_found() -> None:
    """GetAlert and UpdateAlertState of an unknown fingerprint answer NOT_FOUND."""

    async def body(api: Api) -> None:
        await refused(
            api.alerts.GetAlert(alert_pb2.GetAlertRequest(fingerprint="nope")), grpc.StatusCode.NOT_FOUND
        )
        update = alert_pb2.UpdateAlertStateRequest(
            fingerprint="nope", state=alert_pb2.ALERT_STATE_ACKNOWLEDGED
        )
        await refused(api.alerts.UpdateAlertState(update), grpc.StatusCode.NOT_FOUND)

    served(body)


def test_catalog_lists_every_alert_type_once_across_pages() -> None:
    """ListAlertTypes pages through the whole catalog; an unknown type is NOT_FOUND."""

    async def body(api: Api) -> None:
        ids: list[str] = []
        token = ""
        while True:
            page = await api.catalog.ListAlertTypes(
                catalog_pb2.ListAlertTypesRequest(page=common_pb2.PageRequest(page_size=2, page_token=token))
            )
            ids.extend(t.id for t in page.alert_types)
            token = page.page.next_page_token
            if not token:
                break
        assert ids == sorted(CATALOG)
        await refused(
            api.catalog.GetAlertType(catalog_pb2.GetAlertTypeRequest(id="no.such")), grpc.StatusCode.NOT_FOUND
        )

    served(body)


# -- listing and triage ----------------------------------------------------------------------


def test_list_alerts_pages_return_every_alert_exactly_once() -> None:
    """Paging through ListAlerts returns each matching alert once, even one updated between pages."""

    async def body(api: Api) -> None:
        for i in range(23):
            await api.store.put_alert(alert(f"fp-{i:02d}", seconds=1_700_000_000 + i % 4), 0)
        await api.store.put_alert(alert("other-app", application="blog"), 0)
        pages: list[list[alert_pb2.Alert]] = []
        token = ""
        while True:
            request = alert_pb2.ListAlertsRequest(
                filter=alert_pb2.AlertFilter(applications=["shop"]),
                page=common_pb2.PageRequest(page_size=5, page_token=token),
            )
            response = await api.alerts.ListAlerts(request)
            pages.append(list(response.alerts))
            token = response.page.next_page_token
            if len(pages) == 2:
                # An alert of a later page is seen again (and one already listed, too) meanwhile.
                for fingerprint in ("fp-20", "fp-01"):
                    stored = await api.store.get_alert(fingerprint)
                    assert stored is not None
                    stored.value.last_seen.seconds = 1_800_000_000
                    await api.store.put_alert(stored.value, stored.mod_revision)
            if not token:
                break
        assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
        listed = [a for page in pages for a in page]
        fingerprints = [a.fingerprint for a in listed]
        assert fingerprints == [f"fp-{i:02d}" for i in range(23)]
        assert all(a.revision > 0 for a in listed)

    served(body)


def test_update_alert_state_records_who_why_and_when() -> None:
    """Each triage change is appended to the alert's history with actor, reason and time."""

    async def body(api: Api) -> None:
        await api.store.put_alert(alert("fp"), 0)
        before = time.time_ns()
        first = await api.alerts.UpdateAlertState(
            alert_pb2.UpdateAlertStateRequest(
                fingerprint="fp", state=alert_pb2.ALERT_STATE_ACKNOWLEDGED, reason="looking into it"
            )
        )
        second = await api.alerts.UpdateAlertState(
            alert_pb2.UpdateAlertStateRequest(
                fingerprint="fp", state=alert_pb2.ALERT_STATE_NOT_AN_ISSUE, reason="health check"
            )
        )
        after = time.time_ns()
        assert second.alert.state == alert_pb2.ALERT_STATE_NOT_AN_ISSUE
        history = second.alert.history
        assert [(h.state, h.reason) for h in history] == [
            (alert_pb2.ALERT_STATE_ACKNOWLEDGED, "looking into it"),
            (alert_pb2.ALERT_STATE_NOT_AN_ISSUE, "health check"),
        ]
        assert all("127.0.0.1" in h.actor for h in history)
        times = [h.time.ToNanoseconds() for h in history]
        assert before <= times[0] <= times[1] <= after
        stored = await api.store.get_alert("fp")
        assert stored is not None
        assert stored.value == second.alert
        assert first.alert.revision < second.alert.revision == stored.mod_revision

    served(body)


def test_triage_states_that_need_a_reason_or_an_end_require_them() -> None:
    """NOT_AN_ISSUE needs a reason; SUPPRESSED needs a reason and suppressed_until; both are checked."""

    async def body(api: Api) -> None:
        await api.store.put_alert(alert("fp"), 0)
        bad = [
            (
                alert_pb2.UpdateAlertStateRequest(fingerprint="fp", state=alert_pb2.ALERT_STATE_NOT_AN_ISSUE),
                "reason",
            ),
            (
                alert_pb2.UpdateAlertStateRequest(
                    fingerprint="fp", state=alert_pb2.ALERT_STATE_SUPPRESSED, reason="x"
                ),
                "suppressed_until",
            ),
            (
                alert_pb2.UpdateAlertStateRequest(fingerprint="fp", state=alert_pb2.ALERT_STATE_UNSPECIFIED),
                "state",
            ),
            (alert_pb2.UpdateAlertStateRequest(fingerprint="fp", state=typing.cast(Any, 42)), "state"),
        ]
        for request, field in bad:
            details = await refused(api.alerts.UpdateAlertState(request), grpc.StatusCode.INVALID_ARGUMENT)
            assert details.startswith(f"{field}:")
        untouched = await api.store.get_alert("fp")
        assert untouched is not None
        assert list(untouched.value.history) == []

        until = Timestamp(seconds=1_900_000_000)
        suppressed = await api.alerts.UpdateAlertState(
            alert_pb2.UpdateAlertStateRequest(
                fingerprint="fp",
                state=alert_pb2.ALERT_STATE_SUPPRESSED,
                reason="maintenance",
                suppressed_until=until,
            )
        )
        assert (suppressed.alert.state, suppressed.alert.suppressed_until) == (
            alert_pb2.ALERT_STATE_SUPPRESSED,
            until,
        )
        reopened = await api.alerts.UpdateAlertState(
            alert_pb2.UpdateAlertStateRequest(fingerprint="fp", state=alert_pb2.ALERT_STATE_OPEN)
        )
        assert not reopened.alert.HasField("suppressed_until")

    served(body)


# -- watching --------------------------------------------------------------------------------


def test_watch_sends_existing_alerts_then_live_changes() -> None:
    """With send_existing, current alerts come first grouped by revision, then every later change."""

    async def body(api: Api) -> None:
        store = api.store
        a_rev = await store.put_alert(alert("a"), 0)
        node_rev = await store.put_node(inventory_pb2.Node(node_id="n"), 0)
        bc_rev = await store.commit_batch(
            inventory_pb2.Node(node_id="n"), node_rev, [(alert("b"), 0), (alert("c"), 0)]
        )
        await store.put_alert(alert("elsewhere", application="blog"), 0)

        call = api.alerts.WatchAlerts(
            alert_pb2.WatchAlertsRequest(
                send_existing=True, filter=alert_pb2.AlertFilter(applications=["shop"])
            )
        )
        existing = [await next_message(call), await next_message(call)]
        assert [(m.revision, sorted(changes(m))) for m in existing] == [
            (a_rev, [(CREATED, "a", 1)]),
            (bc_rev, [(CREATED, "b", 1), (CREATED, "c", 1)]),
        ]
        update_rev = await store.put_alert(alert("a", occurrences=5), a_rev)
        blog_rev = await store.put_alert(alert("blog-2", application="blog"), 0)  # filtered out
        d_rev = await store.commit_batch(
            inventory_pb2.Node(node_id="n"),
            bc_rev,
            [(alert("d"), 0), (alert("blog-3", application="blog"), 0)],
        )
        live = [await next_message(call), await next_message(call)]
        call.cancel()
        assert [(m.revision, changes(m)) for m in live] == [
            (update_rev, [(UPDATED, "a", 5)]),
            (d_rev, [(CREATED, "d", 1)]),
        ]

        resumed = api.alerts.WatchAlerts(alert_pb2.WatchAlertsRequest(after_revision=blog_rev))
        message = await next_message(resumed)
        resumed.cancel()
        assert (message.revision, sorted(changes(message))) == (
            d_rev,
            [(CREATED, "blog-3", 1), (CREATED, "d", 1)],
        )

    served(body)


def test_watch_from_now_sends_only_later_changes() -> None:
    """Without send_existing or a position, a watch sends only changes made after it started."""

    async def body(api: Api) -> None:
        await api.store.put_alert(alert("before"), 0)
        call = api.alerts.WatchAlerts(alert_pb2.WatchAlertsRequest())
        await asyncio.wait_for(call.initial_metadata(), WAIT_S)  # the watch position is fixed now
        after = await api.store.put_alert(alert("after"), 0)
        message = await next_message(call)
        call.cancel()
        assert (message.revision, changes(message)) == (after, [(CREATED, "after", 1)])

    served(body)


def test_watch_positions_outside_the_history_are_refused() -> None:
    """A negative position is INVALID_ARGUMENT; one older than the retained history is OUT_OF_RANGE."""

    async def body(api: Api) -> None:
        first = await api.store.put_alert(alert("a"), 0)
        await api.store.put_alert(alert("b"), 0)
        await api.store.compact(api.store.revision)
        negative = api.alerts.WatchAlerts(alert_pb2.WatchAlertsRequest(after_revision=-1))
        await refused(negative.read(), grpc.StatusCode.INVALID_ARGUMENT)
        compacted = api.alerts.WatchAlerts(alert_pb2.WatchAlertsRequest(after_revision=first - 1))
        details = await refused(compacted.read(), grpc.StatusCode.OUT_OF_RANGE)
        assert "send_existing" in details

    served(body)


def test_a_suppression_that_has_ended_reads_as_open() -> None:
    """An alert suppressed until a past time lists and reads as open; one suppressed until later does not."""

    async def body(api: Api) -> None:
        ended = alert("fp-ended")
        ended.state = alert_pb2.ALERT_STATE_SUPPRESSED
        ended.suppressed_until.FromSeconds(int(time.time()) - 60)
        later = alert("fp-later")
        later.state = alert_pb2.ALERT_STATE_SUPPRESSED
        later.suppressed_until.FromSeconds(int(time.time()) + 3600)
        await api.store.put_alert(ended, 0)
        await api.store.put_alert(later, 0)
        suppressed = await api.alerts.ListAlerts(
            alert_pb2.ListAlertsRequest(
                filter=alert_pb2.AlertFilter(states=[alert_pb2.ALERT_STATE_SUPPRESSED])
            )
        )
        assert [a.fingerprint for a in suppressed.alerts] == ["fp-later"]
        got = await api.alerts.GetAlert(alert_pb2.GetAlertRequest(fingerprint="fp-ended"))
        assert got.alert.state == alert_pb2.ALERT_STATE_OPEN
        assert got.alert.history[-1].reason == "suppression expired"

    served(body)
