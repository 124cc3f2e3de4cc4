"""The agent's per-connection path driven without a listener: one intake, a socket pair."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from telltale.nodeagent.batcher import Counters
from telltale.nodeagent.intake import Intake, Workloads, _Connection
from telltale.v1 import common_pb2


class Judged:
    """A process table that sorts every pid a record may claim into the three cases attribution
    tells apart, the same way every time: a child of the peer (pid % 3 == 0), a live stranger
    (pid % 3 == 1: forged), or no process at all."""

    def parent(self, pid: int) -> int | None:
        if pid == os.getpid():
            return os.getppid()
        return {0: os.getpid(), 1: 1, 2: None}[pid % 3]


class IntakeConnection:
    """One intake connection driven directly: messages in at one end of a socket pair, drained."""

    def __init__(self, *, native_path: bool) -> None:
        self.counters = Counters()
        self.workloads = Workloads()
        self.events: list[tuple[common_pb2.Event, str | None]] = []
        self.intake = Intake(
            Path("/nonexistent/agent.sock"),  # never listened on: the drain reads a socket pair
            self._collect,
            self.counters,
            self.workloads,
            native=native_path,
            processes=Judged(),
        )

    def _collect(self, events: list[bytes], workload: common_pb2.Workload | None) -> None:
        assert events, "a run holds at least one event"
        owner = workload.id if workload else None
        self.events.extend((common_pb2.Event.FromString(e), owner) for e in events)

    def feed(self, messages: list[bytes]) -> None:
        """Send `messages` on one connection, drain them as the agent does, then hang up.

        The peer hangs up only once its messages are read: an empty message read after the peer
        has gone cannot be told from the end of the stream (see docs/hostile-input.md).
        """
        agent_end, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with agent_end, peer:
            agent_end.setblocking(False)
            conn = _Connection(peer_pid=os.getpid())
            drain = self.intake._drain_native if self.intake.native else self.intake._drain
            for message in messages:
                peer.send(message)
            for _ in range(len(messages) + 1):
                if self.counters.records + self.counters.malformed >= len(messages):
                    break
                assert drain(agent_end, conn), "the connection stays open while the peer is there"
            peer.close()
            assert not drain(agent_end, conn), "the drain sees the end of the stream"
            self.intake._forget(conn)
