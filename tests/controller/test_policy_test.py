"""Policy dry runs (PolicyService.TestPolicy) over gRPC in-process, on the in-memory store.

The window of recent events is filled directly, as the agent streams fill it, so each test
controls exactly which events were received and when.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from telltale.controller.agent_service import AgentService
from telltale.controller.memstore import MemoryStore
from telltale.controller.policies import PolicyView
from telltale.controller.policy_service import PolicyService
from telltale.controller.recent import RecentEvents, batch_events
from telltale.engine import builtin
from telltale.engine import policy as policy_model
from telltale.engine.evaluate import fingerprint
from telltale.v1 import agent_pb2, agent_pb2_grpc, common_pb2, policy_pb2, policy_pb2_grpc

NS = 1_000_000_000
SHOP = common_pb2.Workload(id="w-shop", application="shop", component="api")
BILLING = common_pb2.Workload(id="w-billing", application="billing")


def shell() -> common_pb2.Event:
    """An event Standard turns into a process.shell_launched finding (P2)."""
    return common_pb2.Event(
        kind=common_pb2.EVENT_KIND_EXEC,
        count=1,
        process=common_pb2.ProcessInfo(pid=10, exe="/usr/bin/python3", euid=1000),
        exec=common_pb2.ExecDetail(path="/bin/sh"),
    )


def listen_80() -> common_pb2.Event:
    """Listening on 127.0.0.1:80: only network.privileged_port (off in Standard) fires on it."""
    return common_pb2.Event(
        kind=common_pb2.EVENT_KIND_LISTEN,
        count=1,
        process=common_pb2.ProcessInfo(pid=10, exe="/usr/bin/python3", euid=1000),
        socket=common_pb2.SocketDetail(
            address=common_pb2.SocketAddress(family="inet", address="127.0.0.1", port=80), domain=2, type=1
        ),
    )


QUIET_SHELLS = {"process.shell_launched": {"enabled": False}}


def candidate(changes: dict[str, dict[str, Any]], name: str = "Standard") -> str:
    """Standard as a document named `name`, with the given fields of the given rules changed."""
    standard = builtin.load_builtin_policies()["Standard"]
    rules = dict(standard.rules)
    for alert_type, fields in changes.items():
        rules[alert_type] = dataclasses.replace(rules[alert_type], **fields)
    return policy_model.to_document(dataclasses.replace(standard, name=name, builtin=False, rules=rules))


@dataclass
class Api:
    store: MemoryStore
    view: PolicyView
    recent: RecentEvents
    policies: policy_pb2_grpc.PolicyServiceStub

    def received(self, workload: common_pb2.Workload, *events: common_pb2.Event, ago_s: float = 0) -> None:
        """Put `events` of `workload` in the window as received `ago_s` seconds ago."""
        batch = agent_pb2.EventBatch(
            workloads=[workload], events=[common_pb2.Event(workload_id=workload.id) for _ in events]
        )
        for template, event in zip(events, batch.events, strict=True):
            event.MergeFrom(template)
        self.recent.add(batch_events(batch, "node-1"), time.time_ns() - int(ago_s * NS))

    async def test(
        self, document: str, since_s: int = 0, apps: tuple[str, ...] = ()
    ) -> policy_pb2.TestPolicyResponse:
        return await self.policies.TestPolicy(
            policy_pb2.TestPolicyRequest(document=document, since_seconds=since_s, applications=apps)
        )


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[Api]:
    """PolicyService over a MemoryStore seeded with the built-ins, with a window to fill."""
    store = MemoryStore()
    await store.seed_policies(
        [policy_model.to_proto(p) for p in builtin.load_builtin_policies().values()], builtin.DEFAULT_POLICY
    )
    view = PolicyView(store)
    await view.load()
    recent = RecentEvents()
    server = grpc.aio.server()
    policy_pb2_grpc.add_PolicyServiceServicer_to_server(PolicyService(store, view, recent), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield Api(store, view, recent, policy_pb2_grpc.PolicyServiceStub(channel))
    finally:
        await server.stop(None)


def run(body: Callable[[Api], Awaitable[None]]) -> None:
    async def main() -> None:
        async with serving() as api:
            await body(api)

    asyncio.run(main())


def keys(findings: object) -> list[tuple[str, str, str, int]]:
    return [(f.alert_type, f.application, f.subject, f.occurrences) for f in findings]  # type: ignore[attr-defined]


def test_a_type_the_candidate_enables_is_added() -> None:
    """Enabling privileged ports shows the listener on port 80 as an alert the candidate adds."""

    async def body(api: Api) -> None:
        api.received(SHOP, listen_80(), listen_80(), shell())
        result = await api.test(candidate({"network.privileged_port": {"enabled": True}}))
        assert keys(result.added) == [("network.privileged_port", "shop", "80", 2)]
        added = result.added[0]
        assert added.component == "api"
        assert added.fingerprint == fingerprint("network.privileged_port", "shop", "api", "80")
        assert added.priority == common_pb2.PRIORITY_P4  # Standard's priority for the type
        assert list(result.removed) == []
        assert result.changed == 0
        assert result.events_considered == 3

    run(body)


def test_a_type_the_candidate_disables_is_removed_and_a_new_priority_is_counted() -> None:
    """Disabling shells removes the shell alert; raising its priority instead only changes it."""

    async def body(api: Api) -> None:
        api.received(SHOP, shell(), shell())
        removed = await api.test(candidate(QUIET_SHELLS))
        assert keys(removed.removed) == [("process.shell_launched", "shop", "/bin/sh", 2)]
        assert removed.removed[0].priority == common_pb2.PRIORITY_P2  # as the policy in force has it
        assert list(removed.added) == []
        urgent = await api.test(candidate({"process.shell_launched": {"priority": common_pb2.PRIORITY_P1}}))
        assert (list(urgent.added), list(urgent.removed), urgent.changed) == ([], [], 1)

    run(body)


def test_a_candidate_named_like_a_policy_judges_only_that_policys_workloads() -> None:
    """A candidate stands in for the policy of its name; a new name judges every workload in scope."""

    async def body(api: Api) -> None:
        await api.policies.ClonePolicy(policy_pb2.ClonePolicyRequest(source="Standard", name="Billing"))
        await api.policies.AssignPolicy(
            policy_pb2.AssignPolicyRequest(
                assignment=policy_pb2.PolicyAssignment(application="billing", policy="Billing")
            )
        )
        await api.view.load()  # a controller's view follows the store; this one is loaded by hand
        api.received(SHOP, shell())
        api.received(BILLING, shell(), shell())

        billing = await api.test(candidate(QUIET_SHELLS, "Billing"))
        assert keys(billing.removed) == [("process.shell_launched", "billing", "/bin/sh", 2)]
        assert billing.events_considered == 2

        fresh = await api.test(candidate(QUIET_SHELLS, "Fresh"))
        assert keys(fresh.removed) == [
            ("process.shell_launched", "billing", "/bin/sh", 2),
            ("process.shell_launched", "shop", "/bin/sh", 1),
        ]
        scoped = await api.test(candidate(QUIET_SHELLS, "Fresh"), apps=("shop",))
        assert keys(scoped.removed) == [("process.shell_launched", "shop", "/bin/sh", 1)]
        assert scoped.events_considered == 1

    run(body)


def test_the_window_leaves_out_older_events_and_says_how_far_back_it_reaches() -> None:
    """--since 1h leaves out a shell launched two hours ago; the response names both bounds."""

    async def body(api: Api) -> None:
        api.received(BILLING, shell(), ago_s=7200)
        api.received(SHOP, shell(), ago_s=60)
        before = time.time_ns()
        result = await api.test(candidate(QUIET_SHELLS), since_s=3600)
        assert keys(result.removed) == [("process.shell_launched", "shop", "/bin/sh", 1)]
        assert result.events_considered == 1
        start = result.window_start.ToNanoseconds()
        assert before - 3600 * NS <= start <= time.time_ns() - 3600 * NS
        assert result.retained_since.ToNanoseconds() < start
        everything = await api.test(candidate(QUIET_SHELLS))
        assert everything.events_considered == 2
        assert not everything.HasField("window_start")

    run(body)


def test_a_dry_run_writes_nothing() -> None:
    """The store revision is the same after a dry run, and the window still holds its events."""

    async def body(api: Api) -> None:
        api.received(SHOP, shell(), listen_80())
        revision = api.store.revision
        result = await api.test(candidate({"network.privileged_port": {"enabled": True}, **QUIET_SHELLS}))
        assert (len(result.added), len(result.removed)) == (1, 1)
        assert api.store.revision == revision
        alerts, _ = await api.store.list_alerts()
        assert alerts == []
        assert len(api.recent) == 2

    run(body)


def test_an_invalid_candidate_is_refused_with_the_field_path() -> None:
    """An unknown alert type is INVALID_ARGUMENT naming spec.rules.<type>; a missing document too."""

    async def body(api: Api) -> None:
        bad = candidate({}).replace("process.shell_launched:", "process.nope:")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await api.test(bad)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "spec.rules.process.nope" in (refused.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as empty:
            await api.test("")
        assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (empty.value.details() or "").startswith("document:")
        with pytest.raises(grpc.aio.AioRpcError) as negative:
            await api.test(candidate({}), since_s=-1)
        assert (negative.value.details() or "").startswith("since_seconds:")

    run(body)


def test_the_window_is_bounded_in_count_and_age() -> None:
    """The oldest events go first once the window is full or they are older than its maximum age."""
    recent = RecentEvents(max_events=3, max_age_s=60)
    batch = agent_pb2.EventBatch(
        workloads=[SHOP],
        events=[common_pb2.Event(workload_id=SHOP.id, count=n) for n in range(4)]
        + [common_pb2.Event(workload_id="w-gone", count=9)],
    )
    items = batch_events(batch, "node-1")
    assert [(w.application, w.node_id) for _, w in items][-2:] == [("shop", "node-1"), ("unknown", "node-1")]
    recent.add(items[:1], 0)
    recent.add(items[1:3], 10 * NS)
    assert ([e.count for _, e, _ in recent.since(0)], recent.oldest_ns) == ([0, 1, 2], 0)
    recent.add(items[3:], 20 * NS)  # full: the oldest goes
    assert ([e.count for _, e, _ in recent.since(0)], recent.oldest_ns) == ([2, 3, 9], 10 * NS)
    recent.add([], 75 * NS)  # what was received at 10 s is now older than 60 s
    assert [e.count for _, e, _ in recent.since(0)] == [3, 9]
    assert [e.count for _, e, _ in recent.since(20 * NS + 1)] == []
    with pytest.raises(ValueError, match="max_events"):
        RecentEvents(max_events=0)


def test_batches_an_agent_stream_records_enter_the_window_once() -> None:
    """A recorded batch lands in the shared window with its workloads; a re-sent one does not."""

    async def body() -> None:
        store = MemoryStore()
        await store.seed_policies(
            [policy_model.to_proto(p) for p in builtin.load_builtin_policies().values()],
            builtin.DEFAULT_POLICY,
        )
        view = PolicyView(store)
        await view.load()
        recent = RecentEvents()
        server = grpc.aio.server()
        agent_pb2_grpc.add_AgentServiceServicer_to_server(AgentService(store, view, "ctl", recent), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        batch = agent_pb2.EventBatch(seq=1, workloads=[SHOP], events=[shell(), shell()])
        batch.events[0].workload_id = SHOP.id
        batch.events[1].workload_id = "w-undescribed"
        requests = [
            agent_pb2.ConnectRequest(hello=agent_pb2.Hello(node_id="node-1")),
            agent_pb2.ConnectRequest(batch=batch),
            agent_pb2.ConnectRequest(batch=batch),  # a resend after a lost acknowledgement
        ]
        acks = 0
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                queue: asyncio.Queue[agent_pb2.ConnectRequest | None] = asyncio.Queue()
                for request in requests:
                    queue.put_nowait(request)

                async def outgoing() -> AsyncIterator[agent_pb2.ConnectRequest]:
                    while (item := await queue.get()) is not None:
                        yield item

                async with asyncio.timeout(10):
                    async for response in agent_pb2_grpc.AgentServiceStub(channel).Connect(outgoing()):
                        if response.WhichOneof("message") == "batch_ack":
                            acks += 1
                            if acks == 2:
                                queue.put_nowait(None)
        finally:
            await server.stop(None)
        held = [(w.application, w.node_id) for _, _, w in recent.since(0)]
        assert held == [("shop", "node-1"), ("unknown", "node-1")]

    asyncio.run(body())
