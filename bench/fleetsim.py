"""A load generator that speaks the real agent protocol: N simulated node agents in one process.

Each simulated agent opens its own connection (its own TCP connection and HTTP/2 stream) to a
controller's `AgentService.Connect`, says Hello with its own node id, then streams numbered event
batches at a chosen rate, sends heartbeats, and acknowledges every policy update it receives with
`PolicyApplied`, the way `telltale agent` does. It records what a benchmark needs: when each policy
revision arrived, how many events were acknowledged, and how many batches are still in flight.

The client side is kept cheap so that it measures the controller and not itself: batches are
pre-serialized once (only the sequence number is encoded per batch) and responses are decoded only
as far as their kind and, for a policy update, its revision.

Run alone against a controller that serves plaintext on loopback:

    python -m bench.fleetsim --controller 127.0.0.1:7443 --agents 500 --rate 100 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import resource
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from telltale.v1 import agent_pb2, common_pb2

CONNECT_METHOD = "/telltale.v1.AgentService/Connect"
MAX_IN_FLIGHT = 4  # batches sent and not yet acknowledged, per agent (the real agent streams similarly)
_WELCOME, _BATCH_ACK, _POLICY_UPDATE = 0x0A, 0x12, 0x1A  # ConnectResponse oneof tags (fields 1, 2, 3)
_BATCH = 0x12  # ConnectRequest.batch (field 2, length-delimited)


class StreamEnded(Exception):
    """The controller closed the agent stream."""


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


class BatchTemplate:
    """A batch's workloads and events serialized once; `request(seq)` frames it with a sequence
    number as a ConnectRequest (byte-identical to what protobuf would produce)."""

    def __init__(self, workloads: Sequence[common_pb2.Workload], events: Sequence[common_pb2.Event]) -> None:
        body = agent_pb2.EventBatch(workloads=workloads, events=events).SerializeToString()
        self._body = body
        self.events = len(events)

    def request(self, seq: int) -> bytes:
        inner = b"\x08" + _varint(seq) + self._body
        return bytes([_BATCH]) + _varint(len(inner)) + inner


def policy_revision(response: bytes) -> int:
    """The revision of a serialized ConnectResponse that holds a PolicyUpdate, without decoding
    the policies (revision is field 1 and serialized first; a revision of 0 is omitted)."""
    _, pos = _read_varint(response, 1)  # the policy_update's length
    if pos < len(response) and response[pos] == 0x08:
        return _read_varint(response, pos + 1)[0]
    return agent_pb2.ConnectResponse.FromString(response).policy_update.revision


@dataclass
class AgentStats:
    """What one simulated agent saw."""

    connected_at: float = 0.0  # monotonic time of the Welcome
    events_acked: int = 0
    batches_acked: int = 0
    policy_updates: list[tuple[int, float]] = field(default_factory=list)  # (revision, monotonic)
    error: str = ""

    def revision_arrival(self, revision: int) -> float | None:
        """When the first update at or after `revision` arrived (monotonic), or None."""
        for seen, at in self.policy_updates:
            if seen >= revision:
                return at
        return None


class SimAgent:
    """One simulated agent: one channel, one Connect stream."""

    def __init__(
        self,
        target: str,
        node_id: str,
        templates: Sequence[BatchTemplate],
        *,
        batch_interval: float,
        rng: random.Random,
    ) -> None:
        self.target = target
        self.node_id = node_id
        self.templates = templates
        self.batch_interval = batch_interval  # seconds between batches; 0 = no events, inf never
        self.rng = rng
        self.stats = AgentStats()
        self.welcomed = asyncio.Event()
        self._acked = asyncio.Condition()
        self._acked_seq = 0
        self._sent: dict[int, int] = {}  # seq -> events, until acknowledged
        self._heartbeat_s = 5.0
        self._writing = asyncio.Lock()

    async def _write(self, call: Any, message: bytes) -> None:
        # grpc.aio allows one write at a time on a call; heartbeats, batches and acknowledgements
        # come from three tasks.
        async with self._writing:
            await call.write(message)

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, stream until `stop` is set, then close the stream; errors land in stats.error."""
        # Each agent its own connection: without a local subchannel pool, channels to one target
        # would share one TCP connection, which no real fleet does.
        options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", 64 << 20)]
        async with grpc.aio.insecure_channel(self.target, options=options) as channel:
            connect = channel.stream_stream(
                CONNECT_METHOD,
                request_serializer=lambda b: b,
                response_deserializer=lambda b: b,
            )
            call = connect()
            try:
                await self._session(call, stop)
            except grpc.aio.AioRpcError as exc:
                if not stop.is_set():
                    self.stats.error = f"{exc.code().name}: {exc.details()}"
            except StreamEnded as exc:
                if not stop.is_set():
                    self.stats.error = str(exc)
            finally:
                call.cancel()

    async def _session(self, call: Any, stop: asyncio.Event) -> None:
        hello = agent_pb2.ConnectRequest(
            hello=agent_pb2.Hello(
                node_id=self.node_id,
                hostname=self.node_id,
                kernel="6.1.0-sim",
                os="fleetsim",
                agent_version="fleetsim",
                instance_id=uuid.uuid4().hex,
            )
        )
        await self._write(call, hello.SerializeToString())
        reader = asyncio.create_task(self._read(call))
        try:
            await self.welcomed.wait()
            writers = [asyncio.create_task(self._heartbeats(call))]
            if self.batch_interval != float("inf"):
                writers.append(asyncio.create_task(self._batches(call)))
            stopped = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([reader, stopped, *writers], return_when=asyncio.FIRST_COMPLETED)
            for task in (stopped, *writers):
                task.cancel()
            for task in done:
                if task is not stopped and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError, StreamEnded):
                await reader

    async def _read(self, call: Any) -> None:
        while True:
            response = await call.read()
            if response is grpc.aio.EOF:
                raise StreamEnded("the controller ended the stream")
            kind = response[0]
            if kind == _POLICY_UPDATE:
                revision = policy_revision(response)
                self.stats.policy_updates.append((revision, time.monotonic()))
                applied = agent_pb2.ConnectRequest(policy_applied=agent_pb2.PolicyApplied(revision=revision))
                await self._write(call, applied.SerializeToString())
            elif kind == _BATCH_ACK:
                seq = agent_pb2.ConnectResponse.FromString(response).batch_ack.seq
                async with self._acked:
                    for done in [s for s in self._sent if s <= seq]:
                        self.stats.events_acked += self._sent.pop(done)
                        self.stats.batches_acked += 1
                    self._acked_seq = max(self._acked_seq, seq)
                    self._acked.notify_all()
            elif kind == _WELCOME:
                welcome = agent_pb2.ConnectResponse.FromString(response).welcome
                self._next_seq = welcome.last_seq + 1
                self._heartbeat_s = (welcome.heartbeat_interval_ms or 5000) / 1000
                self.stats.connected_at = time.monotonic()
                self.welcomed.set()

    async def _heartbeats(self, call: Any) -> None:
        await asyncio.sleep(self.rng.uniform(0, self._heartbeat_s))  # spread the fleet's heartbeats
        while True:
            beat = agent_pb2.ConnectRequest(heartbeat=agent_pb2.Heartbeat())
            beat.heartbeat.time.GetCurrentTime()
            await self._write(call, beat.SerializeToString())
            await asyncio.sleep(self._heartbeat_s)

    async def _batches(self, call: Any) -> None:
        if self.batch_interval:
            await asyncio.sleep(self.rng.uniform(0, self.batch_interval))
        next_at = time.monotonic()
        while True:
            async with self._acked:
                await self._acked.wait_for(lambda: len(self._sent) < MAX_IN_FLIGHT)
            template = self.rng.choice(self.templates)
            seq = self._next_seq
            self._next_seq += 1
            self._sent[seq] = template.events
            await self._write(call, template.request(seq))
            if self.batch_interval:
                next_at += self.batch_interval
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit (each agent holds a socket); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class Fleet:
    """N simulated agents against one controller, started together and stopped together."""

    def __init__(
        self,
        target: str,
        n: int,
        templates: Sequence[BatchTemplate],
        *,
        events_per_s: float = 0.0,
        prefix: str = "sim",
        seed: int = 1,
    ) -> None:
        """`events_per_s` is per agent (0 = heartbeats and policy acknowledgements only)."""
        rng = random.Random(seed)
        per_batch = sum(t.events for t in templates) / len(templates) if templates else 0
        interval = per_batch / events_per_s if events_per_s > 0 and per_batch else float("inf")
        self.agents = [
            SimAgent(
                target,
                f"{prefix}-{i:05}",
                templates,
                batch_interval=interval,
                rng=random.Random(rng.random()),
            )
            for i in range(n)
        ]
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, *, within: float = 120.0, connect_concurrency: int = 64) -> float:
        """Connect every agent (at most `connect_concurrency` handshakes at once) and wait for
        every Welcome; returns the seconds it took. Raises TimeoutError naming how many are missing,
        or RuntimeError with the first agent's error."""
        raise_fd_limit()
        started = time.monotonic()
        gate = asyncio.Semaphore(connect_concurrency)

        async def launch(agent: SimAgent) -> None:
            async with gate:
                self._tasks.append(asyncio.create_task(agent.run(self._stop)))
                waiter = asyncio.create_task(agent.welcomed.wait())
                await asyncio.wait([waiter, self._tasks[-1]], return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()

        try:
            await asyncio.wait_for(asyncio.gather(*(launch(a) for a in self.agents)), within)
        except TimeoutError:
            missing = sum(not a.welcomed.is_set() for a in self.agents)
            raise TimeoutError(
                f"{missing} of {len(self.agents)} agents not welcomed within {within:.0f} s"
            ) from None
        failed = [a for a in self.agents if not a.welcomed.is_set()]
        if failed:
            raise RuntimeError(f"{len(failed)} agents failed to connect; first: {failed[0].stats.error}")
        return time.monotonic() - started

    def errors(self) -> list[str]:
        """The errors of agents whose stream ended while the fleet was running."""
        return [f"{a.node_id}: {a.stats.error}" for a in self.agents if a.stats.error]

    def events_acked(self) -> int:
        """Events acknowledged so far, fleet-wide."""
        return sum(a.stats.events_acked for a in self.agents)

    async def wait_revision(self, revision: int, within: float) -> list[float]:
        """Wait until every agent has received policy revision `revision` (or a later one); returns
        each agent's arrival time (monotonic). Raises TimeoutError naming how many are missing."""
        deadline = time.monotonic() + within
        while True:
            arrivals = [a.stats.revision_arrival(revision) for a in self.agents]
            if all(at is not None for at in arrivals):
                return [at for at in arrivals if at is not None]
            if time.monotonic() > deadline:
                missing = [a for a, at in zip(self.agents, arrivals, strict=True) if at is None]
                first = missing[0]
                raise TimeoutError(
                    f"{len(missing)} of {len(arrivals)} agents never received revision {revision}; "
                    f"first: {first.node_id}, updates {[r for r, _ in first.stats.policy_updates]}, "
                    f"stream error {first.stats.error or 'none'}"
                )
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        """Close every stream and wait for the agents to finish."""
        self._stop.set()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=30)


def standard_templates(
    count: int = 32, events: int = 64, workloads: int = 4, seed: int = 7
) -> list[BatchTemplate]:
    """`count` batch templates of `events` events each, in the typical event mix of bench.evaluate,
    spread over `workloads` workloads of one application. A fleet replays them, so after the first
    batches most findings are repeats of known alerts: the steady state of a deduplicating fleet."""
    from bench.evaluate import typical_mix

    rng = random.Random(seed)
    described = [
        common_pb2.Workload(id=f"w{i}", application="fleetsim", component=f"c{i % 2}", version="1")
        for i in range(workloads)
    ]
    templates = []
    for _ in range(count):
        batch_events = typical_mix(rng, events)
        for event in batch_events:
            event.workload_id = rng.choice(described).id
        templates.append(BatchTemplate(described, batch_events))
    return templates


async def _main(args: argparse.Namespace) -> None:
    fleet = Fleet(args.controller, args.agents, standard_templates(), events_per_s=args.rate)
    took = await fleet.start()
    print(f"{args.agents} agents connected in {took:.1f} s", flush=True)
    begun, before = time.monotonic(), fleet.events_acked()
    try:
        while time.monotonic() - begun < args.seconds:
            await asyncio.sleep(1)
            elapsed = time.monotonic() - begun
            print(
                f"{elapsed:5.0f} s  {(fleet.events_acked() - before) / elapsed:10.0f} events/s acknowledged",
                flush=True,
            )
    finally:
        await fleet.stop()
    for error in fleet.errors()[:5]:
        print(f"error: {error}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--controller", default="127.0.0.1:7443", help="controller address (plaintext)")
    parser.add_argument("--agents", type=int, default=100, help="simulated agents (default %(default)s)")
    parser.add_argument(
        "--rate", type=float, default=10.0, help="events per second per agent (default %(default)s)"
    )
    parser.add_argument(
        "--seconds", type=float, default=30.0, help="how long to stream (default %(default)s)"
    )
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
