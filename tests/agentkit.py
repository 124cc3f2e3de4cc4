"""Helpers shared by the daemon tests: an agent configuration that stays off the host's firewall
and network state, the controller's messages, and batches spooled by hand."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from telltale.nodeagent.config import AgentConfig
from telltale.nodeagent.daemon import Agent
from telltale.nodeagent.memlink import MemorySession
from telltale.v1 import agent_pb2, common_pb2

SHOP = common_pb2.Workload(id="w-shop", application="shop")
CTL_A, CTL_B = "127.0.0.1:7001", "127.0.0.1:7002"  # never dialled: the connector is in memory


def config(
    tmp_path: Path, controllers: Sequence[str] = (CTL_A,), state: str = "state", **options: Any
) -> AgentConfig:
    """Plaintext, in `tmp_path`; enforcement and host state off unless `options` turn them on (the
    tests that need them pass in-memory twins)."""
    settings: dict[str, Any] = {"enforcement": "off", "host_state": False, **options}
    return AgentConfig(
        plaintext=True,
        socket_path=tmp_path / "a.sock",
        state_dir=tmp_path / state,
        controllers=list(controllers),
        **settings,
    )


def welcome(last_seq: int = 0, heartbeat_ms: int = 3_600_000) -> agent_pb2.ConnectResponse:
    return agent_pb2.ConnectResponse(
        welcome=agent_pb2.Welcome(controller_id="c1", last_seq=last_seq, heartbeat_interval_ms=heartbeat_ms)
    )


def ack(seq: int) -> agent_pb2.ConnectResponse:
    return agent_pb2.ConnectResponse(batch_ack=agent_pb2.BatchAck(seq=seq))


def add_batch(agent: Agent, pid: int) -> None:
    """Spool one batch holding one event of process `pid`."""
    event = common_pb2.Event(
        kind=common_pb2.EVENT_KIND_CONNECT,
        workload_id=SHOP.id,
        count=1,
        process=common_pb2.ProcessInfo(pid=pid),
    )
    agent.batcher.add(event, SHOP, trio.current_time())
    agent.batcher.flush()


async def send_three_acknowledge_one(agent: Agent, session: MemorySession) -> None:
    """Welcome `session` as a new node, spool batches of pids 1-3, wait until all three are sent,
    and acknowledge only the first."""
    session.push(welcome(last_seq=0))
    for pid in (1, 2, 3):
        add_batch(agent, pid)
    await session.wait_for("batch", 3)
    session.push(ack(1))
    while agent.state.last_acked_seq < 1:
        await agent.state.spool.wait_changed()
