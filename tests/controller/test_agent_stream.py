"""The agent stream in-process: registration, batches acknowledged once, host state judged."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from telltale.controller.agent_service import AgentService, _Session
from telltale.controller.memstore import MemoryStore
from telltale.controller.policies import PolicyView
from telltale.engine import builtin
from telltale.engine import policy as policy_model
from telltale.v1 import agent_pb2, agent_pb2_grpc, common_pb2, inventory_pb2

DEADLINE_S = 10.0


async def _serve(store: MemoryStore) -> tuple[grpc.aio.Server, int, PolicyView]:
    await store.seed_policies(
        [policy_model.to_proto(p) for p in builtin.load_builtin_policies().values()], builtin.DEFAULT_POLICY
    )
    view = PolicyView(store)
    await view.load()
    server = grpc.aio.server()
    AgentService(store, view, "ctl-test").register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port, view


async def _stream(
    port: int, requests: asyncio.Queue[agent_pb2.ConnectRequest | None]
) -> AsyncIterator[agent_pb2.ConnectResponse]:
    async def outgoing() -> AsyncIterator[agent_pb2.ConnectRequest]:
        while (item := await requests.get()) is not None:
            yield item

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = agent_pb2_grpc.AgentServiceStub(channel).Connect(outgoing())
        async for response in call:
            yield response


async def _next(responses: AsyncIterator[agent_pb2.ConnectResponse], kind: str) -> agent_pb2.ConnectResponse:
    async with asyncio.timeout(DEADLINE_S):
        async for response in responses:
            if response.WhichOneof("message") == kind:
                return response
    raise AssertionError(f"the stream ended before a {kind}")


def test_host_state_is_judged_by_the_default_policy_and_batches_are_acknowledged_once() -> None:
    """IP forwarding raises one alert for that node; a re-sent batch is acknowledged, not counted again."""

    async def body() -> None:
        store = MemoryStore()
        server, port, _ = await _serve(store)
        requests: asyncio.Queue[agent_pb2.ConnectRequest | None] = asyncio.Queue()
        try:
            responses = _stream(port, requests)
            await requests.put(
                agent_pb2.ConnectRequest(hello=agent_pb2.Hello(node_id="node-1", hostname="h1"))
            )
            welcome = await _next(responses, "welcome")
            assert welcome.welcome.last_seq == 0
            state = agent_pb2.NodeState(full=True, sysctls={"net.ipv4.ip_forward": "1"})
            await requests.put(agent_pb2.ConnectRequest(node_state=state))
            batch = agent_pb2.EventBatch(
                seq=1,
                workloads=[common_pb2.Workload(id="w1", application="shop")],
                events=[
                    common_pb2.Event(
                        kind=common_pb2.EVENT_KIND_EXEC,
                        workload_id="w1",
                        count=1,
                        exec=common_pb2.ExecDetail(path="/bin/sh", argv=["sh"]),
                    )
                ],
            )
            for _ in range(2):  # the second is a resend after a lost acknowledgement
                await requests.put(agent_pb2.ConnectRequest(batch=batch))
                ack = await _next(responses, "batch_ack")
                assert ack.batch_ack.seq == 1
            deadline = time.monotonic() + DEADLINE_S
            while time.monotonic() < deadline:
                alerts, _ = await store.list_alerts()
                by_type = {a.value.alert_type: a.value for a in alerts}
                if "node.ip_forwarding" in by_type:
                    break
                await asyncio.sleep(0.01)
            assert by_type["node.ip_forwarding"].nodes == ["node-1"]
            assert by_type["node.ip_forwarding"].application == ""
            assert by_type["process.shell_launched"].occurrences == 1
            node = await store.get_node("node-1")
            assert node is not None
            assert node.value.last_seq == 1
        finally:
            await requests.put(None)
            await server.stop(None)

    asyncio.run(body())


def test_the_old_streams_goodbye_does_not_mark_offline_a_node_that_reconnected_here() -> None:
    """A quick reconnect of the same agent to the same replica: the old stream's offline change,
    applied after the new stream's registration, leaves the node online; the new stream's own
    goodbye marks it offline."""

    async def body() -> None:
        store = MemoryStore()
        server, _, view = await _serve(store)
        await server.stop(None)
        service = AgentService(store, view, "ctl-test")
        hello = agent_pb2.Hello(node_id="node-r", hostname="r", instance_id="agent-1")
        context: Any = None  # registration and goodbye do not touch the call
        old = _Session(service, hello, context)
        await (await old.recording.change(old._registered))
        new = _Session(service, hello, context)
        await (await new.recording.change(new._registered))
        await old.close(mark_offline=True)
        node = await store.get_node("node-r")
        assert node is not None
        assert node.value.liveness == inventory_pb2.NODE_LIVENESS_ONLINE
        await new.close(mark_offline=True)
        node = await store.get_node("node-r")
        assert node is not None
        assert node.value.liveness == inventory_pb2.NODE_LIVENESS_OFFLINE

    asyncio.run(body())
