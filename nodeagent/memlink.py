"""The in-memory twin of the controller link, for tests and demos without a controller.

`MemoryConnector.open(endpoint)` yields a session wired to a `MemoryController` that the caller
holds. Through it the caller reads what the agent sent (Hello, batches, heartbeats,
PolicyApplied), pushes ConnectResponses (Welcome, BatchAck, PolicyUpdate), refuses chosen
endpoints, and ends a session as a restarting controller would. Everything runs in the caller's
trio run: no threads, no sockets.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import trio

from telltale.nodeagent.link import LinkClosed
from telltale.v1 import agent_pb2

if TYPE_CHECKING:
    from telltale.nodeagent.link import Connector, LinkSession


class _Changes:
    """Wakes waiters whenever a session opens, ends or carries a message."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._event.wait()


class MemorySession:
    """One stream between the agent (send/receive) and the controller side (push/end, `sent`)."""

    def __init__(self, endpoint: str, changes: _Changes) -> None:
        self.endpoint = endpoint
        self.sent: list[agent_pb2.ConnectRequest] = []
        self.ended = False  # the controller side ended the stream
        self.closed = False  # the agent left the session
        self._changes = changes
        self._end_reason = "stream closed"
        self._to_agent, self._from_controller = trio.open_memory_channel[agent_pb2.ConnectResponse](math.inf)

    # -- the agent's side (LinkSession) --

    def send(self, message: agent_pb2.ConnectRequest) -> None:
        """Record `message` for the controller; messages sent after the stream is over are lost."""
        if self.ended or self.closed:
            return
        copy = agent_pb2.ConnectRequest()
        copy.CopyFrom(message)  # what was on the wire, whatever the agent does with its objects later
        self.sent.append(copy)
        self._changes.notify()

    async def receive(self) -> agent_pb2.ConnectResponse:
        """The next pushed response; raises LinkClosed once the session is ended or closed."""
        try:
            return await self._from_controller.receive()
        except trio.EndOfChannel:
            raise LinkClosed(self._end_reason) from None
        except trio.ClosedResourceError:
            raise LinkClosed("session closed") from None

    # -- the controller's side --

    def push(self, response: agent_pb2.ConnectResponse) -> None:
        """Queue a response for the agent.

        Raises trio.ClosedResourceError after `end()`, trio.BrokenResourceError once the agent left.
        """
        self._to_agent.send_nowait(response)

    def end(self, reason: str = "controller restarted") -> None:
        """End the stream: once it has read what was pushed, the agent's receive raises LinkClosed."""
        if not self.ended:
            self.ended = True
            self._end_reason = reason
            self._to_agent.close()
            self._changes.notify()

    def messages(self, kind: str) -> list[agent_pb2.ConnectRequest]:
        """What the agent sent whose `message` oneof is `kind` ("hello", "batch", "heartbeat", ...)."""
        return [m for m in self.sent if m.WhichOneof("message") == kind]

    @property
    def hello(self) -> agent_pb2.Hello:
        """The session's first message, which must be a Hello. Raises LookupError otherwise."""
        if not self.sent or not self.sent[0].HasField("hello"):
            raise LookupError(f"session to {self.endpoint} did not start with a hello")
        return self.sent[0].hello

    @property
    def batches(self) -> list[agent_pb2.EventBatch]:
        return [m.batch for m in self.messages("batch")]

    @property
    def heartbeats(self) -> list[agent_pb2.Heartbeat]:
        return [m.heartbeat for m in self.messages("heartbeat")]

    @property
    def policies_applied(self) -> list[agent_pb2.PolicyApplied]:
        return [m.policy_applied for m in self.messages("policy_applied")]

    async def wait_for(self, kind: str, count: int = 1) -> list[agent_pb2.ConnectRequest]:
        """Wait until the agent has sent at least `count` messages of `kind`; returns all of them.

        Never times out by itself: callers put a deadline around it.
        """
        await self._changes.wait_until(lambda: len(self.messages(kind)) >= count)
        return self.messages(kind)

    async def wait_closed(self) -> None:
        """Wait until the agent has left the session."""
        await self._changes.wait_until(lambda: self.closed)

    def _close(self) -> None:
        self.closed = True
        self._from_controller.close()
        self._changes.notify()


class MemoryController:
    """The controller behind one endpoint: the sessions opened to it and whether it refuses."""

    def __init__(self, endpoint: str, changes: _Changes) -> None:
        self.endpoint = endpoint
        self.refusing = False
        self.attempts = 0  # calls to open(), refused ones included
        self.sessions: list[MemorySession] = []
        self._changes = changes

    async def wait_session(self, number: int = 1) -> MemorySession:
        """Wait until `number` sessions were opened here; returns the `number`-th (from 1)."""
        await self._changes.wait_until(lambda: len(self.sessions) >= number)
        return self.sessions[number - 1]

    async def wait_attempts(self, count: int) -> None:
        """Wait until open() was called `count` times for this endpoint."""
        await self._changes.wait_until(lambda: self.attempts >= count)


class MemoryConnector:
    """A Connector whose endpoints are MemoryControllers, created on first use."""

    def __init__(self) -> None:
        self._changes = _Changes()
        self.controllers: dict[str, MemoryController] = {}

    def controller(self, endpoint: str) -> MemoryController:
        """The controller at `endpoint`."""
        found = self.controllers.get(endpoint)
        if found is None:
            found = self.controllers[endpoint] = MemoryController(endpoint, self._changes)
        return found

    def refuse(self, endpoint: str, refusing: bool = True) -> None:
        """Make open(endpoint) raise LinkClosed (or stop doing so)."""
        self.controller(endpoint).refusing = refusing

    @asynccontextmanager
    async def open(self, endpoint: str) -> AsyncIterator[MemorySession]:
        """A session to `endpoint`; raises LinkClosed when that controller refuses."""
        await trio.lowlevel.checkpoint()
        controller = self.controller(endpoint)
        controller.attempts += 1
        self._changes.notify()
        if controller.refusing:
            raise LinkClosed(f"controller {endpoint} refused the connection")
        session = MemorySession(endpoint, self._changes)
        controller.sessions.append(session)
        self._changes.notify()
        try:
            yield session
        finally:
            session._close()


if TYPE_CHECKING:  # both classes satisfy the link protocols
    _session: LinkSession = MemorySession("", _Changes())
    _connector: Connector = MemoryConnector()
