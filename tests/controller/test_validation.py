"""Every RPC of the console API validates its arguments: an invalid request answers
INVALID_ARGUMENT, the message starts with the offending field's path, and nothing is written.

The table below holds at least one invalid request per RPC; the RPCs are enumerated from the
service descriptors, so a new RPC without a case fails `test_every_rpc_has_an_invalid_case`.
Each case runs against a server over a MemoryStore that holds the built-in policies, a custom
policy, an assignment and an alert, and checks that the store revision did not move.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from telltale.controller.alert_service import AlertService
from telltale.controller.catalog_service import CatalogService
from telltale.controller.inventory_service import InventoryService
from telltale.controller.memstore import MemoryStore
from telltale.controller.policies import PolicyView
from telltale.controller.policy_service import PolicyService
from telltale.controller.recent import RecentEvents
from telltale.controller.rpc import encode_token
from telltale.engine import builtin
from telltale.engine import policy as policy_model
from telltale.v1 import (
    alert_pb2,
    alert_pb2_grpc,
    catalog_pb2,
    catalog_pb2_grpc,
    common_pb2,
    inventory_pb2,
    inventory_pb2_grpc,
    policy_pb2,
    policy_pb2_grpc,
)

SERVICES: tuple[ServiceDescriptor, ...] = (
    policy_pb2.DESCRIPTOR.services_by_name["PolicyService"],
    alert_pb2.DESCRIPTOR.services_by_name["AlertService"],
    inventory_pb2.DESCRIPTOR.services_by_name["InventoryService"],
    catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"],
)

LONG = "x" * 254  # one byte over the bound on names
CUSTOM = "custom"


def _document(name: str) -> str:
    standard = policy_model.to_document(builtin.load_builtin_policies()["Standard"])
    return standard.replace("name: Standard", f"name: {name}", 1)


def _ts(seconds: int, nanos: int = 0) -> Timestamp:
    return Timestamp(seconds=seconds, nanos=nanos)


def _page(token: str = "", size: int = 0) -> common_pb2.PageRequest:
    return common_pb2.PageRequest(page_token=token, page_size=size)


NOW_S = int(time.time())
FOREIGN_TOKEN = encode_token("some-other-listing", "a")

# (RPC, field the error must name, request)
CASES: list[tuple[str, str, Message]] = [
    # -- PolicyService
    ("PolicyService/ListPolicies", "page.page_token", policy_pb2.ListPoliciesRequest(page=_page("garbage!"))),
    (
        "PolicyService/ListPolicies",
        "page.page_token",
        policy_pb2.ListPoliciesRequest(page=_page(FOREIGN_TOKEN)),
    ),
    ("PolicyService/GetPolicy", "name", policy_pb2.GetPolicyRequest(name="")),
    ("PolicyService/GetPolicy", "name", policy_pb2.GetPolicyRequest(name=LONG)),
    ("PolicyService/GetPolicy", "revision", policy_pb2.GetPolicyRequest(name="Standard", revision=-1)),
    ("PolicyService/CreatePolicy", "policy.name", policy_pb2.CreatePolicyRequest()),
    ("PolicyService/CreatePolicy", "document", policy_pb2.CreatePolicyRequest(document="kind: x\n")),
    (
        "PolicyService/CreatePolicy",
        "policy.rules[0].priority",
        policy_pb2.CreatePolicyRequest(
            policy=policy_pb2.Policy(
                name="p",
                rules=[policy_pb2.Rule(alert_type="process.shell_launched", enabled=True, priority=99)],  # type: ignore[arg-type]
            )
        ),
    ),
    (
        "PolicyService/CreatePolicy",
        "policy.rules[0].exceptions[0].expires_at",
        policy_pb2.CreatePolicyRequest(
            policy=policy_pb2.Policy(
                name="p",
                rules=[
                    policy_pb2.Rule(
                        alert_type="process.shell_launched",
                        enabled=True,
                        exceptions=[policy_pb2.RuleException(reason="r", expires_at=_ts(10**13))],
                    )
                ],
            )
        ),
    ),
    (
        "PolicyService/CreatePolicy",
        "document",
        policy_pb2.CreatePolicyRequest(document="# " + "x" * (1024 * 1024) + "\n" + _document("big")),
    ),
    ("PolicyService/ClonePolicy", "source", policy_pb2.ClonePolicyRequest(source="", name="copy")),
    ("PolicyService/ClonePolicy", "name", policy_pb2.ClonePolicyRequest(source="Standard", name="a/b")),
    ("PolicyService/ClonePolicy", "name", policy_pb2.ClonePolicyRequest(source="Standard", name="")),
    (
        "PolicyService/UpdatePolicy",
        "expected_revision",
        policy_pb2.UpdatePolicyRequest(document=_document(CUSTOM), expected_revision=-1),
    ),
    ("PolicyService/UpdatePolicy", "policy.name", policy_pb2.UpdatePolicyRequest(expected_revision=1)),
    ("PolicyService/DeletePolicy", "name", policy_pb2.DeletePolicyRequest(name=" ")),
    ("PolicyService/DeletePolicy", "name", policy_pb2.DeletePolicyRequest(name=LONG)),
    ("PolicyService/SetDefaultPolicy", "name", policy_pb2.SetDefaultPolicyRequest(name="")),
    (
        "PolicyService/AssignPolicy",
        "assignment.application",
        policy_pb2.AssignPolicyRequest(assignment=policy_pb2.PolicyAssignment(application="", policy=CUSTOM)),
    ),
    (
        "PolicyService/AssignPolicy",
        "assignment.component",
        policy_pb2.AssignPolicyRequest(
            assignment=policy_pb2.PolicyAssignment(application="shop", component="no way", policy=CUSTOM)
        ),
    ),
    (
        "PolicyService/AssignPolicy",
        "assignment.policy",
        policy_pb2.AssignPolicyRequest(assignment=policy_pb2.PolicyAssignment(application="shop")),
    ),
    ("PolicyService/UnassignPolicy", "application", policy_pb2.UnassignPolicyRequest(application="")),
    (
        "PolicyService/UnassignPolicy",
        "component",
        policy_pb2.UnassignPolicyRequest(application="shop", component="-bad"),
    ),
    ("PolicyService/ListAssignments", "policy", policy_pb2.ListAssignmentsRequest(policy=LONG)),
    ("PolicyService/ListAssignments", "page.page_token", policy_pb2.ListAssignmentsRequest(page=_page("%%"))),
    ("PolicyService/ListPolicyRevisions", "name", policy_pb2.ListPolicyRevisionsRequest(name="")),
    (
        "PolicyService/ListPolicyRevisions",
        "page.page_token",
        policy_pb2.ListPolicyRevisionsRequest(name="Standard", page=_page(encode_token("revisions", "x"))),
    ),
    ("PolicyService/ValidatePolicy", "document", policy_pb2.ValidatePolicyRequest(document="")),
    (
        "PolicyService/ValidatePolicy",
        "document",
        policy_pb2.ValidatePolicyRequest(document="x" * (1024 * 1024 + 1)),
    ),
    ("PolicyService/TestPolicy", "document", policy_pb2.TestPolicyRequest()),
    (
        "PolicyService/TestPolicy",
        "since_seconds",
        policy_pb2.TestPolicyRequest(document=_document("candidate"), since_seconds=-5),
    ),
    (
        "PolicyService/TestPolicy",
        "applications[1]",
        policy_pb2.TestPolicyRequest(document=_document("candidate"), applications=["shop", ""]),
    ),
    # -- AlertService
    ("AlertService/ListAlerts", "page.page_token", alert_pb2.ListAlertsRequest(page=_page("not-a-token"))),
    (
        "AlertService/ListAlerts",
        "filter.priorities[0]",
        alert_pb2.ListAlertsRequest(filter=alert_pb2.AlertFilter(priorities=[99])),  # type: ignore[list-item]
    ),
    (
        "AlertService/ListAlerts",
        "filter.categories[1]",
        alert_pb2.ListAlertsRequest(
            filter=alert_pb2.AlertFilter(categories=[common_pb2.CATEGORY_NETWORK, 0])  # type: ignore[list-item]
        ),
    ),
    (
        "AlertService/ListAlerts",
        "filter.states[0]",
        alert_pb2.ListAlertsRequest(filter=alert_pb2.AlertFilter(states=[42])),  # type: ignore[list-item]
    ),
    (
        "AlertService/ListAlerts",
        "filter.seen_after",
        alert_pb2.ListAlertsRequest(filter=alert_pb2.AlertFilter(seen_after=_ts(10**12))),
    ),
    (
        "AlertService/ListAlerts",
        "filter.seen_before",
        alert_pb2.ListAlertsRequest(filter=alert_pb2.AlertFilter(seen_before=_ts(NOW_S, nanos=-1))),
    ),
    (
        "AlertService/ListAlerts",
        "filter.seen_before",
        alert_pb2.ListAlertsRequest(
            filter=alert_pb2.AlertFilter(seen_after=_ts(NOW_S), seen_before=_ts(NOW_S - 60))
        ),
    ),
    (
        "AlertService/ListAlerts",
        "filter.applications[0]",
        alert_pb2.ListAlertsRequest(filter=alert_pb2.AlertFilter(applications=[LONG])),
    ),
    ("AlertService/GetAlert", "fingerprint", alert_pb2.GetAlertRequest(fingerprint="")),
    ("AlertService/GetAlert", "fingerprint", alert_pb2.GetAlertRequest(fingerprint=LONG)),
    ("AlertService/WatchAlerts", "after_revision", alert_pb2.WatchAlertsRequest(after_revision=-1)),
    (
        "AlertService/WatchAlerts",
        "filter.priorities[0]",
        alert_pb2.WatchAlertsRequest(filter=alert_pb2.AlertFilter(priorities=[7])),  # type: ignore[list-item]
    ),
    (
        "AlertService/UpdateAlertState",
        "state",
        alert_pb2.UpdateAlertStateRequest(fingerprint="fp", state=99),  # type: ignore[arg-type]
    ),
    ("AlertService/UpdateAlertState", "state", alert_pb2.UpdateAlertStateRequest(fingerprint="fp")),
    (
        "AlertService/UpdateAlertState",
        "fingerprint",
        alert_pb2.UpdateAlertStateRequest(state=alert_pb2.ALERT_STATE_ACKNOWLEDGED),
    ),
    (
        "AlertService/UpdateAlertState",
        "reason",
        alert_pb2.UpdateAlertStateRequest(
            fingerprint="fp", state=alert_pb2.ALERT_STATE_ACKNOWLEDGED, reason="r" * 1025
        ),
    ),
    (
        "AlertService/UpdateAlertState",
        "suppressed_until",
        alert_pb2.UpdateAlertStateRequest(
            fingerprint="fp",
            state=alert_pb2.ALERT_STATE_SUPPRESSED,
            reason="noise",
            suppressed_until=_ts(NOW_S - 60),
        ),
    ),
    (
        "AlertService/UpdateAlertState",
        "suppressed_until",
        alert_pb2.UpdateAlertStateRequest(
            fingerprint="fp",
            state=alert_pb2.ALERT_STATE_SUPPRESSED,
            reason="noise",
            suppressed_until=_ts(2**40),
        ),
    ),
    # -- InventoryService
    ("InventoryService/ListNodes", "page.page_token", inventory_pb2.ListNodesRequest(page=_page("node-1"))),
    ("InventoryService/GetNode", "node_id", inventory_pb2.GetNodeRequest(node_id="")),
    ("InventoryService/GetNode", "node_id", inventory_pb2.GetNodeRequest(node_id=LONG)),
    (
        "InventoryService/ListApplications",
        "page.page_token",
        inventory_pb2.ListApplicationsRequest(page=_page(FOREIGN_TOKEN)),
    ),
    ("InventoryService/ListWorkloads", "application", inventory_pb2.ListWorkloadsRequest(application=LONG)),
    ("InventoryService/ListWorkloads", "node_id", inventory_pb2.ListWorkloadsRequest(node_id=LONG)),
    (
        "InventoryService/ListWorkloads",
        "page.page_token",
        inventory_pb2.ListWorkloadsRequest(page=_page("w")),
    ),
    # -- CatalogService
    ("CatalogService/ListAlertTypes", "category", catalog_pb2.ListAlertTypesRequest(category=99)),  # type: ignore[arg-type]
    (
        "CatalogService/ListAlertTypes",
        "page.page_token",
        catalog_pb2.ListAlertTypesRequest(page=_page("process.shell_launched")),
    ),
    ("CatalogService/GetAlertType", "id", catalog_pb2.GetAlertTypeRequest(id="")),
    ("CatalogService/GetAlertType", "id", catalog_pb2.GetAlertTypeRequest(id=LONG)),
]


def test_every_rpc_has_an_invalid_case() -> None:
    """The table covers every RPC of the four console services, and names only real ones."""
    rpcs = {f"{service.name}/{method.name}" for service in SERVICES for method in service.methods}
    covered = {rpc for rpc, _, _ in CASES}
    assert rpcs - covered == set(), "RPCs without an invalid-argument case"
    assert covered - rpcs == set(), "cases for RPCs that do not exist"


@dataclass
class Api:
    store: MemoryStore
    channel: grpc.aio.Channel


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[Api]:
    """The four console services over a MemoryStore with something in it, and a channel to them."""
    store = MemoryStore()
    await store.seed_policies(
        [policy_model.to_proto(p) for p in builtin.load_builtin_policies().values()], builtin.DEFAULT_POLICY
    )
    custom = policy_model.to_proto(policy_model.parse_document(_document(CUSTOM)))
    custom.revision = 1
    await store.create_policy(custom)
    await store.assign_policy("shop", "", CUSTOM)
    await store.put_alert(
        alert_pb2.Alert(
            fingerprint="fp",
            alert_type="process.shell_launched",
            priority=common_pb2.PRIORITY_P2,
            state=alert_pb2.ALERT_STATE_OPEN,
            last_seen=_ts(NOW_S),
        ),
        0,
    )
    await store.put_node(inventory_pb2.Node(node_id="node-1"), 0)
    await store.put_workload(common_pb2.Workload(id="w", application="shop", node_id="node-1"))
    view = PolicyView(store)
    await view.load()
    server = grpc.aio.server()
    policy_pb2_grpc.add_PolicyServiceServicer_to_server(PolicyService(store, view, RecentEvents()), server)
    alert_pb2_grpc.add_AlertServiceServicer_to_server(AlertService(store), server)
    inventory_pb2_grpc.add_InventoryServiceServicer_to_server(InventoryService(store, view), server)
    catalog_pb2_grpc.add_CatalogServiceServicer_to_server(CatalogService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield Api(store, channel)
    finally:
        await server.stop(None)


def _method(rpc: str) -> tuple[str, type[Message], bool]:
    service_name, method_name = rpc.split("/")
    service = next(s for s in SERVICES if s.name == service_name)
    method = service.methods_by_name[method_name]
    response = message_factory.GetMessageClass(method.output_type)
    return f"/{service.full_name}/{method.name}", response, method.server_streaming


async def _call(channel: grpc.aio.Channel, rpc: str, request: Message) -> None:
    """Call `rpc` ("Service/Method") with `request`, reading a server stream to its end."""
    path, response_type, streaming = _method(rpc)
    serialize = type(request).SerializeToString
    if streaming:
        call = channel.unary_stream(
            path, request_serializer=serialize, response_deserializer=response_type.FromString
        )(request, timeout=10)
        async for _ in call:
            pass
    else:
        await channel.unary_unary(
            path, request_serializer=serialize, response_deserializer=response_type.FromString
        )(request, timeout=10)


@pytest.mark.parametrize(("rpc", "field", "request_message"), CASES, ids=[f"{c[0]}:{c[1]}" for c in CASES])
def test_an_invalid_argument_is_refused_naming_the_field_and_writes_nothing(
    rpc: str, field: str, request_message: Message
) -> None:
    """INVALID_ARGUMENT, a message starting with the field path, and the store revision unchanged."""

    async def body() -> None:
        async with serving() as api:
            revision = api.store.revision
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await _call(api.channel, rpc, request_message)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
            details = refused.value.details() or ""
            assert details.startswith(f"{field}:"), details
            await asyncio.sleep(0)
            assert api.store.revision == revision, "the refused request wrote to the store"

    asyncio.run(body())


def test_valid_requests_of_the_same_shapes_are_served() -> None:
    """The bounds are not too tight: a 253-byte name, a token a listing issued, every real enum value."""

    async def body() -> None:
        async with serving() as api:
            alerts = alert_pb2_grpc.AlertServiceStub(api.channel)
            listed = await alerts.ListAlerts(
                alert_pb2.ListAlertsRequest(
                    filter=alert_pb2.AlertFilter(
                        priorities=[p for p in common_pb2.Priority.values() if p],
                        states=[s for s in alert_pb2.AlertState.values() if s],
                        seen_after=_ts(0),
                        seen_before=_ts(NOW_S + 3600),
                    )
                )
            )
            assert [a.fingerprint for a in listed.alerts] == ["fp"]
            inventory = inventory_pb2_grpc.InventoryServiceStub(api.channel)
            await api.store.put_node(inventory_pb2.Node(node_id="node-2"), 0)
            first = await inventory.ListNodes(inventory_pb2.ListNodesRequest(page=_page(size=1)))
            assert [n.node_id for n in first.nodes] == ["node-1"]
            rest = await inventory.ListNodes(
                inventory_pb2.ListNodesRequest(page=_page(first.page.next_page_token, size=1))
            )
            assert [n.node_id for n in rest.nodes] == ["node-2"]
            assert not rest.page.next_page_token
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await inventory.GetNode(inventory_pb2.GetNodeRequest(node_id="n" * 253))
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND
            catalog = catalog_pb2_grpc.CatalogServiceStub(api.channel)
            for category in common_pb2.Category.values():
                await catalog.ListAlertTypes(catalog_pb2.ListAlertTypesRequest(category=category))

    asyncio.run(body())
