"""The controller link: one bidirectional AgentService stream, behind a small interface.

grpcio has no trio support, so the real link runs grpcio's synchronous streaming client: grpcio
reads the request iterator on its own thread (fed from trio through a thread-safe queue), and a
worker thread iterates the responses into a trio memory channel. Closing cancels the call and
ends the request iterator with a sentinel rather than abandoning the thread. Waiting for the
channel to connect holds no thread and is cancellable; the channel is closed on every way out.
"""

from __future__ import annotations

import contextlib
import queue
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

import grpc
import trio

from telltale.nodeagent.config import TlsMaterial
from telltale.v1 import agent_pb2, agent_pb2_grpc

RESPONSE_BUFFER = 64


class LinkClosed(Exception):
    """The stream ended or failed; the message says why."""


class LinkSession(Protocol):
    """An open stream to one controller."""

    def send(self, message: agent_pb2.ConnectRequest) -> None:
        """Queue a message for the controller (never blocks)."""
        ...

    async def receive(self) -> agent_pb2.ConnectResponse:
        """The next message from the controller; raises LinkClosed when the stream is over."""
        ...


class Connector(Protocol):
    """Opens sessions to a controller endpoint."""

    def open(self, endpoint: str) -> AbstractAsyncContextManager[LinkSession]:
        """An async context manager yielding a LinkSession; raises LinkClosed if it cannot connect."""
        ...


class _GrpcSession:
    def __init__(
        self,
        requests: queue.SimpleQueue[agent_pb2.ConnectRequest | None],
        responses: trio.MemoryReceiveChannel[agent_pb2.ConnectResponse],
    ) -> None:
        self._requests = requests
        self._responses = responses
        self.error = "stream closed"

    def send(self, message: agent_pb2.ConnectRequest) -> None:
        self._requests.put(message)

    async def receive(self) -> agent_pb2.ConnectResponse:
        try:
            return await self._responses.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise LinkClosed(self.error) from None


async def _wait_ready(channel: grpc.Channel) -> None:
    """Wait until `channel` is connected. Cancellable at any time.

    grpcio completes the readiness future on its own thread; the callback only schedules an
    event in this trio run, so no thread waits here.
    """
    ready = trio.Event()
    token = trio.lowlevel.current_trio_token()

    def wake(_: object) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(ready.set)

    future = grpc.channel_ready_future(channel)
    future.add_done_callback(wake)
    try:
        await ready.wait()
    finally:
        future.cancel()  # stops grpcio watching the connectivity for it


class GrpcConnector:
    """Opens AgentService streams with grpcio's synchronous client: mutual TLS with `tls` (the CA
    that signed the controllers' certificates, and this node's certificate), else plaintext."""

    def __init__(self, *, connect_timeout: float = 5.0, tls: TlsMaterial | None = None) -> None:
        self._connect_timeout = connect_timeout
        self._credentials = (
            None
            if tls is None
            else grpc.ssl_channel_credentials(
                root_certificates=tls.ca, private_key=tls.key, certificate_chain=tls.cert
            )
        )

    def _channel(self, endpoint: str, options: list[tuple[str, Any]]) -> grpc.Channel:
        if self._credentials is None:
            return grpc.insecure_channel(endpoint, options=options)
        return grpc.secure_channel(endpoint, self._credentials, options=options)

    @asynccontextmanager
    async def open(self, endpoint: str) -> AsyncIterator[LinkSession]:
        channel = self._channel(
            endpoint,
            [
                ("grpc.keepalive_time_ms", 20_000),
                ("grpc.max_send_message_length", 16 * 1024 * 1024),
                # A policy update carries every policy's blocked networks: well over gRPC's 4 MiB
                # default for large country blocks.
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ],
        )
        with contextlib.closing(channel):
            with trio.move_on_after(self._connect_timeout) as waiting:
                await _wait_ready(channel)
            if waiting.cancelled_caught:
                # A refused TLS handshake (wrong CA, certificate rejected) looks the same from here.
                tls = " (or its TLS handshake failed)" if self._credentials is not None else ""
                raise LinkClosed(
                    f"controller {endpoint} not reachable within {self._connect_timeout:g}s{tls}"
                )
            async with self._stream(channel) as session:
                yield session

    @asynccontextmanager
    async def _stream(self, channel: grpc.Channel) -> AsyncIterator[LinkSession]:
        requests: queue.SimpleQueue[agent_pb2.ConnectRequest | None] = queue.SimpleQueue()

        def request_iter() -> Iterator[agent_pb2.ConnectRequest]:
            while (item := requests.get()) is not None:
                yield item

        call = agent_pb2_grpc.AgentServiceStub(channel).Connect(request_iter())
        send_channel, receive_channel = trio.open_memory_channel[agent_pb2.ConnectResponse](RESPONSE_BUFFER)
        session = _GrpcSession(requests, receive_channel)
        token = trio.lowlevel.current_trio_token()

        def pump() -> None:
            try:
                for response in call:
                    trio.from_thread.run(send_channel.send, response, trio_token=token)
            except grpc.RpcError as exc:
                session.error = f"{exc.code().name}: {exc.details()}"
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.RunFinishedError):
                pass
            finally:
                with contextlib.suppress(trio.RunFinishedError):
                    trio.from_thread.run_sync(send_channel.close, trio_token=token)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, pump)
            try:
                yield session
            finally:
                requests.put(None)
                call.cancel()  # type: ignore[no-untyped-call]
                receive_channel.close()
