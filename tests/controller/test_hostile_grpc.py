"""Malformed, oversized and out-of-order input on the agent stream, from a raw gRPC client.

The AgentService runs in process on a real gRPC server with the production message limit
(16 MiB, as controller/server.py configures it) over a MemoryStore, whose revision shows any write.
Each hostile call gets a clear status, writes nothing when it is refused before registration, and
the server goes on serving the next, well-behaved agent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import grpc
import pytest

from telltale.controller.agent_service import AgentService
from telltale.controller.memstore import MemoryStore
from telltale.controller.policies import PolicyView
from telltale.engine import builtin
from telltale.engine import policy as policy_model
from telltale.v1 import agent_pb2, common_pb2

MAX_MESSAGE = 16 * 1024 * 1024  # controller/server.py: grpc.max_receive_message_length
CONNECT = "/telltale.v1.AgentService/Connect"
DEADLINE_S = 30.0  # generous: the machine may be busy


def message(**fields: object) -> bytes:
    return agent_pb2.ConnectRequest(**fields).SerializeToString()  # type: ignore[arg-type]


HELLO = message(hello=agent_pb2.Hello(node_id="node-h", hostname="h"))


def batch(seq: int, *events: common_pb2.Event) -> bytes:
    return message(batch=agent_pb2.EventBatch(seq=seq, events=list(events)))


def shell(path: str = "/bin/sh") -> common_pb2.Event:
    return common_pb2.Event(
        kind=common_pb2.EVENT_KIND_EXEC, workload_id="w", count=1, exec=common_pb2.ExecDetail(path=path)
    )


class Outcome:
    def __init__(self, kinds: list[str], code: grpc.StatusCode, details: str) -> None:
        self.kinds, self.code, self.details = kinds, code, details


async def call(port: int, messages: Sequence[bytes], *, then: Sequence[bytes] = (), want: int = 0) -> Outcome:
    """Write raw `messages` (bytes as they go on the wire) on one Connect stream, keep it open, and
    read responses until the server ends the call (its status is returned) or `want` have come
    (then the client cancels). `then` is written once the Welcome and the first PolicyUpdate have
    been read (see test_a_bad_message_right_after_the_hello_always_gets_its_status)."""
    kinds: list[str] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stream = channel.stream_stream(
            CONNECT, request_serializer=None, response_deserializer=agent_pb2.ConnectResponse.FromString
        )()
        async with asyncio.timeout(DEADLINE_S):
            try:
                for item in messages:
                    await stream.write(item)
                if then:
                    while len(kinds) < 2:
                        kinds.append((await stream.read()).WhichOneof("message") or "")  # type: ignore[union-attr]
                    for item in then:
                        await stream.write(item)
                while not want or len(kinds) < want:
                    response = await stream.read()
                    if response is grpc.aio.EOF:
                        break
                    kinds.append(response.WhichOneof("message") or "")
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                pass  # the server ended the call: its status follows
            if want and len(kinds) >= want:
                stream.cancel()
                return Outcome(kinds, grpc.StatusCode.CANCELLED, "")
            return Outcome(kinds, await stream.code(), await stream.details() or "")


Body = Callable[[int, MemoryStore], Awaitable[None]]


def with_server(body: Body) -> None:
    async def run() -> None:
        store = MemoryStore()
        await store.seed_policies(
            [policy_model.to_proto(p) for p in builtin.load_builtin_policies().values()],
            builtin.DEFAULT_POLICY,
        )
        view = PolicyView(store)
        await view.load()
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_MESSAGE)])
        AgentService(store, view, "ctl-hostile").register(server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            await body(port, store)
            # Whatever came before, the next agent is served: registered, its batch acknowledged.
            good = message(hello=agent_pb2.Hello(node_id="node-good", hostname="good"))
            after = await call(port, [good, batch(1, shell())], want=3)
            assert sorted(after.kinds) == ["batch_ack", "policy_update", "welcome"], after.details
        finally:
            await server.stop(None)

    asyncio.run(run())


REFUSED_BEFORE_HELLO = {
    "an empty first message": [b""],
    "a Hello without node_id": [message(hello=agent_pb2.Hello(hostname="h"))],
    "a Hello with a blank node_id": [message(hello=agent_pb2.Hello(node_id=" \t"))],
    "a batch before the Hello": [batch(1, shell())],
    "a heartbeat before the Hello": [message(heartbeat=agent_pb2.Heartbeat())],
}


@pytest.mark.parametrize("messages", REFUSED_BEFORE_HELLO.values(), ids=REFUSED_BEFORE_HELLO.keys())
def test_a_stream_that_does_not_start_with_a_hello_is_refused_and_writes_nothing(
    messages: list[bytes],
) -> None:
    async def body(port: int, store: MemoryStore) -> None:
        before = store.revision
        out = await call(port, messages)
        assert out.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "hello" in out.details
        assert out.kinds == []
        assert store.revision == before, "nothing is written for a refused stream"

    with_server(body)


def test_a_second_hello_on_a_stream_is_invalid_argument() -> None:
    async def body(port: int, store: MemoryStore) -> None:
        out = await call(port, [HELLO], then=[HELLO])
        assert out.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "sent twice" in out.details

    with_server(body)


@pytest.mark.parametrize("first", [True, False], ids=["first", "after-hello"])
def test_a_message_over_the_size_limit_is_resource_exhausted(first: bool) -> None:
    """A message of 16 MiB + 1 KiB is refused by gRPC before the service sees it (bounded memory)."""
    oversized = b"\x12" + _varint(MAX_MESSAGE + 1024) + bytes(MAX_MESSAGE + 1024)

    async def body(port: int, store: MemoryStore) -> None:
        before = store.revision
        out = await call(port, [oversized]) if first else await call(port, [HELLO], then=[oversized])
        assert out.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in out.details
        if first:
            assert store.revision == before

    with_server(body)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def test_bytes_that_are_not_a_connect_request_are_invalid_argument_and_write_nothing() -> None:
    """First or after the Hello: INVALID_ARGUMENT, nothing written for them, the server serves on."""

    async def body(port: int, store: MemoryStore) -> None:
        before = store.revision
        out = await call(port, [b"\xff\xff\xff\xff"])
        assert store.revision == before
        assert out.code == grpc.StatusCode.INVALID_ARGUMENT, (out.code, out.details)
        assert "not a ConnectRequest" in out.details
        out = await call(port, [HELLO], then=[b"\x0a\xff\xff"])
        assert out.code == grpc.StatusCode.INVALID_ARGUMENT, (out.code, out.details)
        assert "not a ConnectRequest" in out.details
        node = await store.get_node("node-h")
        assert node is not None
        assert node.value.last_seq == 0

    with_server(body)


def test_unknown_enum_values_and_extreme_fields_are_taken_without_harm() -> None:
    """Open proto3 enums and extreme values: an event kind of 9999, u32 and i32 extremes, a
    non-address, a 4 MiB path: the batch is acknowledged and the stream stays up."""
    odd = [
        common_pb2.Event(kind=9999, workload_id="w", count=2**32 - 1),  # type: ignore[arg-type]
        common_pb2.Event(
            kind=common_pb2.EVENT_KIND_CONNECT,
            workload_id="w",
            process=common_pb2.ProcessInfo(pid=2**32 - 1, ppid=2**32 - 1, uid=2**32 - 1),
            socket=common_pb2.SocketDetail(
                address=common_pb2.SocketAddress(family="inet", address="999.1.1.1", port=2**32 - 1),
                domain=-(2**31),
                backlog=2**31 - 1,
            ),
        ),
        shell("/" + "x" * (4 * 1024 * 1024)),
    ]

    async def body(port: int, store: MemoryStore) -> None:
        out = await call(port, [HELLO, batch(1, *odd)], want=3)
        assert sorted(out.kinds) == ["batch_ack", "policy_update", "welcome"], out.details
        alerts, _ = await store.list_alerts()
        assert all(len(a.value.SerializeToString()) < MAX_MESSAGE for a in alerts)

    with_server(body)


@pytest.mark.parametrize("seq", [2**64 - 1, 2**32 + 2])
def test_an_out_of_range_seq_is_refused_and_does_not_swallow_the_nodes_later_batches(seq: int) -> None:
    """A batch numbered more than 2**32 past the node's highest sequence number is refused
    (INVALID_ARGUMENT naming batch.seq) and not recorded; the node's next real batch is."""

    async def body(port: int, store: MemoryStore) -> None:
        out = await call(port, [HELLO, batch(1), batch(seq)])
        assert out.code == grpc.StatusCode.INVALID_ARGUMENT, (out.code, out.details)
        assert "batch.seq" in out.details
        node = await store.get_node("node-h")
        assert node is not None
        assert node.value.last_seq <= 1
        await call(port, [HELLO, batch(2, shell())], want=3)
        alerts, _ = await store.list_alerts()
        assert any(a.value.alert_type == "process.shell_launched" for a in alerts)
        node = await store.get_node("node-h")
        assert node is not None
        assert node.value.last_seq == 2

    with_server(body)


def test_a_gap_within_the_bound_is_recorded() -> None:
    """A batch 2**32 past the last recorded one (batches dropped by the agent's spool) is taken."""

    async def body(port: int, store: MemoryStore) -> None:
        out = await call(port, [HELLO, batch(1), batch(1 + 2**32)], want=4)
        assert sorted(out.kinds) == ["batch_ack", "batch_ack", "policy_update", "welcome"], out.details
        node = await store.get_node("node-h")
        assert node is not None
        assert node.value.last_seq == 1 + 2**32
        assert node.value.sequence_gaps == 2**32 - 1

    with_server(body)


def hello(**fields: object) -> bytes:
    values: dict[str, object] = {"node_id": "node-h", "hostname": "h", **fields}
    return message(hello=agent_pb2.Hello(**values))  # type: ignore[arg-type]


BAD_HELLOS = {
    "a 15 MiB node_id": (hello(node_id="n" * (15 * 1024 * 1024)), "hello.node_id"),
    "a node_id of 254 bytes": (hello(node_id="n" * 254), "hello.node_id"),
    "a node_id with a slash": (hello(node_id="../alerts/x"), "hello.node_id"),
    "a node_id with a space": (hello(node_id="node h"), "hello.node_id"),
    "a node_id of non-ASCII letters": (hello(node_id="nöde"), "hello.node_id"),
    "a node_id starting with a dot": (hello(node_id=".node"), "hello.node_id"),
    "a 257-byte hostname": (hello(hostname="h" * 257), "hello.hostname"),
    "a 257-byte kernel": (hello(kernel="k" * 257), "hello.kernel"),
    "a 257-byte os": (hello(os="o" * 257), "hello.os"),
    "a 257-byte agent_version": (hello(agent_version="v" * 257), "hello.agent_version"),
    "a 257-byte instance_id": (hello(instance_id="i" * 257), "hello.instance_id"),
    "a 257-byte boot_id": (hello(boot_id="b" * 257), "hello.boot_id"),
    "a 129-character hostname of 2-byte letters": (hello(hostname="é" * 129), "hello.hostname"),
    "1025 addresses": (hello(addresses=["10.0.0.1"] * 1025), "hello.addresses"),
    "a 129-byte address": (hello(addresses=["10.0.0.1", "a" * 129]), "hello.addresses[1]"),
}


@pytest.mark.parametrize(("first", "field"), BAD_HELLOS.values(), ids=BAD_HELLOS.keys())
def test_a_hello_field_out_of_bounds_is_refused_and_writes_nothing(first: bytes, field: str) -> None:
    async def body(port: int, store: MemoryStore) -> None:
        before = store.revision
        out = await call(port, [first])
        assert out.code == grpc.StatusCode.INVALID_ARGUMENT, (out.code, out.details)
        assert out.details.startswith(field + ":"), out.details
        assert out.kinds == []
        assert store.revision == before

    with_server(body)


def test_node_ids_the_agent_and_the_certificates_make_are_accepted() -> None:
    """What nodeagent/identity.py generates (hostname-random), a certificate name (telltale/pki.py),
    a fully qualified name of 253 bytes, and a name with a colon; and strings at their limits."""
    ids = [
        "web-01.example.com-0123456789ab",
        "Node_7",
        ("a" * 63 + ".") * 3 + "a" * 61,
        "zone:a:node-1",
    ]

    async def body(port: int, store: MemoryStore) -> None:
        for node_id in ids:
            first = hello(node_id=node_id, hostname="h" * 256, os="é" * 128, addresses=["a" * 128] * 1024)
            out = await call(port, [first], want=2)
            assert sorted(out.kinds) == ["policy_update", "welcome"], (node_id, out.details)
            assert await store.get_node(node_id) is not None

    with_server(body)


def workload(**fields: object) -> common_pb2.Workload:
    values: dict[str, object] = {"id": "w", "application": "shop", **fields}
    return common_pb2.Workload(**values)  # type: ignore[arg-type]


BAD_WORKLOADS = {
    "a 513-byte application": (workload(application="a" * 513), "batch.workloads[0].application"),
    "a 513-byte component": (workload(component="c" * 513), "batch.workloads[0].component"),
    "a 513-byte version": (workload(version="v" * 513), "batch.workloads[0].version"),
    "a 513-byte environment": (workload(environment="e" * 513), "batch.workloads[0].environment"),
    "a 513-byte policy override": (workload(policy_override="p" * 513), "batch.workloads[0].policy_override"),
    "a 513-byte id": (workload(id="w" * 513), "batch.workloads[0].id"),
    "a 513-byte tag value": (workload(tags={"k": "v" * 513}), "batch.workloads[0].tags"),
    "a 513-byte tag key": (workload(tags={"k" * 513: "v"}), "batch.workloads[0].tags"),
    "65 tags": (workload(tags={f"k{i}": "v" for i in range(65)}), "batch.workloads[0].tags"),
}


@pytest.mark.parametrize(("described", "field"), BAD_WORKLOADS.values(), ids=BAD_WORKLOADS.keys())
def test_a_workload_string_out_of_bounds_refuses_the_batch(
    described: common_pb2.Workload, field: str
) -> None:
    async def body(port: int, store: MemoryStore) -> None:
        bad = message(batch=agent_pb2.EventBatch(seq=1, workloads=[described], events=[shell()]))
        out = await call(port, [HELLO, bad])
        assert out.code == grpc.StatusCode.INVALID_ARGUMENT, (out.code, out.details)
        assert out.details.startswith(field), out.details
        node = await store.get_node("node-h")
        assert node is not None
        assert node.value.last_seq == 0
        alerts, _ = await store.list_alerts()
        assert alerts == []

    with_server(body)


def test_an_event_naming_a_workload_id_out_of_bounds_refuses_the_batch() -> None:
    async def body(port: int, store: MemoryStore) -> None:
        event = shell()
        event.workload_id = "w" * 513
        out = await call(port, [HELLO, batch(1, shell(), event)])
        assert out.code == grpc.StatusCode.INVALID_ARGUMENT, (out.code, out.details)
        assert out.details.startswith("batch.events[1].workload_id"), out.details

    with_server(body)


def test_a_bad_message_right_after_the_hello_always_gets_its_status() -> None:
    """A second Hello, or bytes that are no ConnectRequest, sent right behind the Hello (while the
    server writes the Welcome and the PolicyUpdate): every call ends with an error status."""

    async def body(port: int, store: MemoryStore) -> None:
        for bad in [HELLO, b"\x0a\xff\xff"] * 20:
            async with asyncio.timeout(5):
                out = await call(port, [HELLO, bad])
            assert out.code == grpc.StatusCode.INVALID_ARGUMENT, (out.code, out.details)

    with_server(body)
