"""The real controller link against a loopback port where nothing listens: the connect wait gives
up on time, yields at once to cancellation, and closes its channel either way."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
import trio
import trio.testing

from telltale.netutil import free_tcp_port
from telltale.nodeagent.link import GrpcConnector, LinkClosed


@pytest.fixture
def closed_channels(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Targets of the channels the link closed (grpc.insecure_channel is wrapped to record it)."""
    closed: list[str] = []
    real = grpc.insecure_channel

    def recording(target: str, *args: Any, **kwargs: Any) -> grpc.Channel:
        channel = real(target, *args, **kwargs)
        close = channel.close

        def close_and_record() -> None:
            closed.append(target)
            close()

        channel.close = close_and_record  # type: ignore[method-assign]
        return channel

    monkeypatch.setattr(grpc, "insecure_channel", recording)
    return closed


@trio.testing.trio_test
async def test_an_unreachable_controller_is_given_up_after_the_connect_timeout(
    closed_channels: list[str],
) -> None:
    endpoint = f"127.0.0.1:{free_tcp_port()}"
    start = trio.current_time()
    with trio.fail_after(10), pytest.raises(LinkClosed, match=f"{endpoint} not reachable within 0.5s"):
        async with GrpcConnector(connect_timeout=0.5).open(endpoint):
            pytest.fail("a session was opened")
    assert 0.5 <= trio.current_time() - start < 3
    assert closed_channels == [endpoint]


@trio.testing.trio_test
async def test_cancelling_the_connect_wait_returns_promptly(closed_channels: list[str]) -> None:
    endpoint = f"127.0.0.1:{free_tcp_port()}"
    start = trio.current_time()
    with trio.move_on_after(0.2) as scope:
        async with GrpcConnector(connect_timeout=30).open(endpoint):
            pytest.fail("a session was opened")
    assert scope.cancelled_caught
    assert trio.current_time() - start < 1.5, "the wait is cancellable, not stuck in a thread"
    assert closed_channels == [endpoint]
