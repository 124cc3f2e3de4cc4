"""The in-memory controller link behaves like a stream to a controller the test drives."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from telltale.nodeagent.link import LinkClosed
from telltale.nodeagent.memlink import MemoryConnector
from telltale.v1 import agent_pb2


def hello(node: str) -> agent_pb2.ConnectRequest:
    return agent_pb2.ConnectRequest(hello=agent_pb2.Hello(node_id=node))


def ack(seq: int) -> agent_pb2.ConnectResponse:
    return agent_pb2.ConnectResponse(batch_ack=agent_pb2.BatchAck(seq=seq))


@trio.testing.trio_test
async def test_a_refused_endpoint_raises_link_closed_until_it_accepts() -> None:
    connector = MemoryConnector()
    connector.refuse("ctl-a")
    with pytest.raises(LinkClosed, match="ctl-a refused"):
        async with connector.open("ctl-a"):
            pytest.fail("a refused endpoint yields no session")
    controller = connector.controller("ctl-a")
    assert (controller.attempts, controller.sessions) == (1, [])
    connector.refuse("ctl-a", refusing=False)
    async with connector.open("ctl-a") as session:
        assert controller.sessions == [session]
    assert controller.attempts == 2


@trio.testing.trio_test
async def test_the_controller_reads_what_the_agent_sent_as_it_was_sent() -> None:
    connector = MemoryConnector()
    async with connector.open("ctl-a") as session:
        message = hello("n1")
        session.send(message)
        message.hello.node_id = "changed later"
        session.send(agent_pb2.ConnectRequest(policy_applied=agent_pb2.PolicyApplied(revision=3)))
        assert session.hello.node_id == "n1"
        assert [p.revision for p in session.policies_applied] == [3]
        assert session.batches == []
        assert len(session.messages("hello")) == 1


@trio.testing.trio_test
async def test_responses_arrive_in_order_then_the_end_of_the_stream() -> None:
    connector = MemoryConnector()
    async with connector.open("ctl-a") as session:
        session.push(ack(1))
        session.push(ack(2))
        session.end("controller restarted")
        assert [(await session.receive()).batch_ack.seq for _ in range(2)] == [1, 2]
        with pytest.raises(LinkClosed, match="controller restarted"):
            await session.receive()
        with pytest.raises(trio.ClosedResourceError):
            session.push(ack(3))
        session.send(hello("n1"))
        assert session.sent == [], "nothing reaches an ended stream"


@trio.testing.trio_test
async def test_leaving_the_session_closes_it_for_both_sides() -> None:
    connector = MemoryConnector()
    async with connector.open("ctl-a") as session:
        pass
    assert session.closed
    with pytest.raises(LinkClosed):
        await session.receive()
    with pytest.raises(trio.BrokenResourceError):
        session.push(ack(1))
    await session.wait_closed()


@trio.testing.trio_test
async def test_waiters_wake_when_the_agent_sends() -> None:
    connector = MemoryConnector()
    controller = connector.controller("ctl-a")
    seen: list[int] = []

    async def controller_side() -> None:
        session = await controller.wait_session()
        batches = await session.wait_for("batch", 2)
        seen.extend(m.batch.seq for m in batches)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(controller_side)
            await trio.testing.wait_all_tasks_blocked()
            async with connector.open("ctl-a") as session:
                for seq in (1, 2):
                    await trio.testing.wait_all_tasks_blocked()
                    assert seen == []
                    session.send(agent_pb2.ConnectRequest(batch=agent_pb2.EventBatch(seq=seq)))
    assert seen == [1, 2]
