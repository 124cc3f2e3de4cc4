"""Host state observation: the node's interfaces, addresses, default routes, listening sockets,
security-relevant kernel settings and kernel release, as `agent_pb2.NodeState` snapshots.

`run_host_state` publishes one full snapshot at start, then a new one only when something
changed: the controller counts every report as one more observation, so identical snapshots are
never published twice. Links, addresses, routes and IP forwarding are watched through rtnetlink
notifications (re-sampled after a burst settles); listening sockets and the other kernel
settings have no notification and are polled.

Snapshots come from a `HostStateSource`: the kernel's (`telltale.nodeagent.hostkernel`, which
says what is read and how it is bounded) or the in-memory `MemoryHostState`, for tests.

Run as ``python -m telltale.nodeagent.hoststate [POLL_SECONDS]`` it prints each published
snapshot of the kernel's source as one JSON line (a diagnostic, and what the namespace tests drive).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable
from typing import Protocol

import trio

from telltale.v1 import agent_pb2

log = logging.getLogger(__name__)

DEBOUNCE_S = 0.15  # quiet time that ends a burst of notifications
MAX_DEBOUNCE_S = 1.0  # a continuous stream of notifications still re-samples this often


class HostStateSource(Protocol):
    """Where host state comes from."""

    async def snapshot(self) -> agent_pb2.NodeState:
        """A full snapshot (``full`` set, ``time`` now) of what can be read; never raises for
        an unreadable part (that part is left out)."""
        ...

    async def wait_change(self) -> None:
        """Return when something may have changed since the last call (or since the source was
        opened). Sources without notifications never return; polling covers them."""
        ...

    def close(self) -> None:
        """Release what the source holds. Idempotent."""
        ...


def same_state(a: agent_pb2.NodeState, b: agent_pb2.NodeState) -> bool:
    """True when the two snapshots differ in nothing but their sampling time."""
    left, right = agent_pb2.NodeState(), agent_pb2.NodeState()
    left.CopyFrom(a)
    right.CopyFrom(b)
    left.ClearField("time")
    right.ClearField("time")
    return left == right


async def run_host_state(
    source: HostStateSource,
    publish: Callable[[agent_pb2.NodeState], None],
    *,
    poll_interval: float = 10.0,
    debounce: float = DEBOUNCE_S,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Publish host state until cancelled: a first snapshot, then each changed one.

    Takes the first snapshot, calls ``task_status.started()``, publishes it, then re-samples
    after each burst of change notifications (once `debounce` seconds pass without one, or at
    most MAX_DEBOUNCE_S after the first) and every `poll_interval` seconds, publishing a snapshot
    only when it differs (ignoring ``time``) from the last one published. `publish` is called
    from this task, must neither block nor raise (what it raises ends the task), and receives a
    message it may keep: nothing here changes it afterwards.

    Never raises for the source's failures: a snapshot that fails is logged and retried at the
    next poll. Takes ownership of `source` and closes it on the way out.
    """
    try:
        last = await _sample(source)
        task_status.started()
        if last is not None:
            publish(last)
        next_poll = trio.current_time() + poll_interval
        while True:
            with trio.move_on_at(next_poll):
                await source.wait_change()
                await _settle(source, debounce)
            next_poll = trio.current_time() + poll_interval
            state = await _sample(source)
            if state is not None and (last is None or not same_state(state, last)):
                publish(state)
                last = state
    finally:
        source.close()


async def _settle(source: HostStateSource, debounce: float) -> None:
    """Wait until notifications stop for `debounce` seconds, or MAX_DEBOUNCE_S at most."""
    with trio.move_on_after(max(debounce, MAX_DEBOUNCE_S)):
        while True:
            with trio.move_on_after(debounce) as quiet:
                await source.wait_change()
            if quiet.cancelled_caught:
                return


async def _sample(source: HostStateSource) -> agent_pb2.NodeState | None:
    try:
        return await source.snapshot()
    except Exception:  # a bug in a source must not end the agent
        log.exception("host state: sampling failed; retrying at the next poll")
        return None


class MemoryHostState:
    """An in-memory HostStateSource for tests: `set` replaces the state, `notify` wakes waiters.

    ``snapshots`` counts the snapshots taken, ``closed`` says whether close() was called.
    """

    def __init__(self, state: agent_pb2.NodeState | None = None) -> None:
        self.state = state if state is not None else agent_pb2.NodeState()
        self.snapshots = 0
        self.closed = False
        self._changed = trio.Event()

    def set(self, state: agent_pb2.NodeState, *, notify: bool = True) -> None:
        """Replace the state; with `notify`, as if the kernel announced the change."""
        self.state = state
        if notify:
            self.notify()

    def notify(self) -> None:
        """Wake `wait_change` (without changing anything, as a spurious notification would)."""
        self._changed.set()

    async def snapshot(self) -> agent_pb2.NodeState:
        self.snapshots += 1
        state = agent_pb2.NodeState()
        state.CopyFrom(self.state)
        state.full = True
        state.time.GetCurrentTime()
        return state

    async def wait_change(self) -> None:
        await self._changed.wait()
        self._changed = trio.Event()

    def close(self) -> None:
        self.closed = True


def _main(argv: list[str]) -> None:
    """Print each published snapshot of this namespace as one JSON line until interrupted."""
    from google.protobuf import json_format

    from telltale.nodeagent.hostkernel import KernelHostState

    poll = float(argv[0]) if argv else 10.0

    def publish(state: agent_pb2.NodeState) -> None:
        text = json_format.MessageToJson(state, preserving_proto_field_name=True, indent=None)
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    logging.basicConfig(level=logging.INFO)
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(lambda: run_host_state(KernelHostState(), publish, poll_interval=poll))


if __name__ == "__main__":
    _main(sys.argv[1:])
