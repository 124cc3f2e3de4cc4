"""The Prometheus endpoint of a real controller process, scraped over HTTP while an agent stream
sends batches; the documented metric list; the store proxy that times etcd requests."""

from __future__ import annotations

import asyncio
import queue
import re
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from telltale.controller import metrics
from telltale.controller.etcd import EmbeddedEtcd
from telltale.controller.memstore import MemoryStore
from telltale.controller.store import Conflict
from telltale.devcluster import LocalCluster, wait_for
from telltale.netutil import free_tcp_port
from telltale.v1 import agent_pb2, agent_pb2_grpc, common_pb2, policy_pb2, policy_pb2_grpc

DOC = Path(__file__).resolve().parents[2] / "docs" / "observability.md"
WAIT_S = 20.0

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class Controller:
    cluster: LocalCluster
    metrics_url: str

    def scrape(self) -> Samples:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            text = response.read().decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


@pytest.fixture(scope="module")
def controller(etcd: EmbeddedEtcd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controller]:
    """A controller process on the module's etcd, with its metrics endpoint on a free loopback port."""
    port = free_tcp_port()
    cluster = LocalCluster(
        tmp_path_factory.mktemp("metrics"),
        etcd_endpoint=etcd.endpoint,
        etcd_prefix=f"/metrics-{uuid.uuid4().hex}/",
        controller_args=["--metrics-listen", f"127.0.0.1:{port}"],
    )
    try:
        cluster.start_controller()
        yield Controller(cluster, f"http://127.0.0.1:{port}/metrics")
    finally:
        cluster.stop()


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


class AgentStream:
    """One agent stream to the controller, spoken with the synchronous client as the agent does."""

    def __init__(self, address: str) -> None:
        self._requests: queue.Queue[agent_pb2.ConnectRequest | None] = queue.Queue()
        self._channel = grpc.insecure_channel(address)
        self._call = agent_pb2_grpc.AgentServiceStub(self._channel).Connect(self._outgoing(), timeout=60)

    def _outgoing(self) -> Iterator[agent_pb2.ConnectRequest]:
        while (item := self._requests.get()) is not None:
            yield item

    def send(self, **message: object) -> None:
        self._requests.put(agent_pb2.ConnectRequest(**message))  # type: ignore[arg-type]

    def expect(self, kind: str) -> agent_pb2.ConnectResponse:
        for response in self._call:
            if response.WhichOneof("message") == kind:
                return response
        raise AssertionError(f"the stream ended before a {kind}")

    def close(self) -> None:
        self._requests.put(None)
        for _ in self._call:
            pass
        self._channel.close()


def shell_batch(seq: int, events: int, *, ago_s: float, **counters: int) -> agent_pb2.EventBatch:
    """A batch of `events` launches of /bin/sh by workload w1 of application shop, `ago_s` old."""
    event = common_pb2.Event(
        kind=common_pb2.EVENT_KIND_EXEC,
        workload_id="w1",
        count=1,
        exec=common_pb2.ExecDetail(path="/bin/sh", argv=["sh"]),
    )
    event.time.FromNanoseconds(time.time_ns() - int(ago_s * 1e9))
    return agent_pb2.EventBatch(
        seq=seq,
        workloads=[common_pb2.Workload(id="w1", application="shop")],
        events=[event] * events,
        **counters,  # type: ignore[arg-type]
    )


def poll(condition: Callable[[], bool], what: str) -> None:
    wait_for(condition, WAIT_S, what)


@pytest.mark.e2e
def test_a_batch_moves_the_counters_by_exactly_what_it_carried(controller: Controller) -> None:
    """Batches, events, findings, alerts, drops, gaps, lag, store and RPC metrics move by exact amounts."""
    before = controller.scrape()
    stream = AgentStream(controller.cluster.api)
    try:
        stream.send(hello=agent_pb2.Hello(node_id=f"metrics-{uuid.uuid4().hex[:8]}", instance_id="i1"))
        stream.expect("welcome")
        pushed = stream.expect("policy_update").policy_update.revision
        connected = controller.scrape()
        assert value(connected, "telltale_agents_connected") == 1
        assert value(connected, "telltale_policy_revision") == pushed
        assert value(connected, "telltale_agents_policy_sync", state="out_of_sync") == 1

        stream.send(batch=shell_batch(1, 3, ago_s=2.0, dropped_records=5, malformed_records=2))
        assert stream.expect("batch_ack").batch_ack.seq == 1
        stream.send(batch=shell_batch(1, 3, ago_s=2.0, dropped_records=5, malformed_records=2))  # resend
        assert stream.expect("batch_ack").batch_ack.seq == 1
        stream.send(batch=shell_batch(3, 1, ago_s=2.0))  # seq 2 never arrives: a gap of one
        assert stream.expect("batch_ack").batch_ack.seq == 3
        stream.send(policy_applied=agent_pb2.PolicyApplied(revision=pushed))
        poll(
            lambda: value(controller.scrape(), "telltale_agents_policy_sync", state="in_sync") == 1,
            "the agent to count as in sync",
        )
        after = controller.scrape()
    finally:
        stream.close()

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("telltale_batches_received_total") == 3
    assert moved("telltale_batches_duplicate_total") == 1
    assert moved("telltale_events_received_total") == 7
    assert moved("telltale_events_evaluated_total") == 4
    # Standard raises process.shell_launched once per launch of /bin/sh, and nothing else for it.
    assert moved("telltale_findings_total") == 4
    assert moved("telltale_alerts_written_total", kind="created") == 1
    assert moved("telltale_alerts_written_total", kind="updated") == 1
    assert moved("telltale_agent_dropped_records_total") == 5
    assert moved("telltale_agent_malformed_records_total") == 2
    assert moved("telltale_sequence_gaps_total") == 1
    assert moved("telltale_stream_lag_seconds_count") == 2
    assert 4.0 <= moved("telltale_stream_lag_seconds_sum") < 60.0
    # One transaction each: the registration, two batches (the resend writes nothing), the acknowledgement.
    assert moved("telltale_store_request_duration_seconds_count", operation="commit_records") == 4
    assert value(after, "telltale_agents_policy_sync", state="out_of_sync") == 0

    def stream_counted() -> bool:
        now = controller.scrape()
        return (
            value(now, "telltale_agents_connected") == 0
            and value(
                now,
                "telltale_grpc_server_handled_total",
                service="telltale.v1.AgentService",
                method="Connect",
                code="OK",
            )
            - value(
                before,
                "telltale_grpc_server_handled_total",
                service="telltale.v1.AgentService",
                method="Connect",
                code="OK",
            )
            == 1
        )

    poll(stream_counted, "the closed stream to be counted")


@pytest.mark.e2e
def test_rpcs_are_counted_by_method_and_status_code(controller: Controller) -> None:
    """An invalid request counts as INVALID_ARGUMENT, a good one as OK, each timed once."""
    labels = {"service": "telltale.v1.PolicyService", "method": "GetPolicy"}
    before = controller.scrape()
    with grpc.insecure_channel(controller.cluster.api) as channel:
        stub = policy_pb2_grpc.PolicyServiceStub(channel)
        stub.GetPolicy(policy_pb2.GetPolicyRequest(name="Standard"), timeout=10)
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetPolicy(policy_pb2.GetPolicyRequest(name=""), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    after = controller.scrape()
    for code in ("OK", "INVALID_ARGUMENT"):
        counted = value(after, "telltale_grpc_server_handled_total", code=code, **labels)
        assert counted - value(before, "telltale_grpc_server_handled_total", code=code, **labels) == 1
    timed = value(after, "telltale_grpc_server_handling_seconds_count", **labels)
    assert timed - value(before, "telltale_grpc_server_handling_seconds_count", **labels) == 2


# -- the documented list ---------------------------------------------------------------------------


class _Policies:
    revision = 7


def registered_metrics() -> dict[str, str]:
    """Name -> type of every metric a serving controller exposes (the registry plus scrape-time
    state); counters by the name they are scraped under, with `_total`."""
    families = [*metrics.REGISTRY.collect(), *metrics.StateCollector(_Policies()).collect()]
    return {f.name + ("_total" if f.type == "counter" else ""): f.type for f in families}


def documented_metrics() -> dict[str, str]:
    """Name -> type of every row of the metrics table of docs/observability.md."""
    rows = re.findall(r"^\| `(telltale_\w+)` \| (\w+) \|", DOC.read_text(), flags=re.MULTILINE)
    assert rows, f"no metrics table in {DOC}"
    return dict(rows)


def test_the_documented_metrics_are_exactly_the_registered_ones() -> None:
    """docs/observability.md lists every metric with its type, and nothing else."""
    assert documented_metrics() == registered_metrics()


def test_every_metric_name_has_the_telltale_prefix() -> None:
    """All metrics are telltale_*, so a scrape of a shared host tells ours apart."""
    assert all(name.startswith("telltale_") for name in registered_metrics())


# -- the store proxy -------------------------------------------------------------------------------


def _count(operation: str) -> float:
    return (
        metrics.REGISTRY.get_sample_value(
            "telltale_store_request_duration_seconds_count", {"operation": operation}
        )
        or 0.0
    )


def _failures(operation: str) -> float:
    return (
        metrics.REGISTRY.get_sample_value("telltale_store_request_failures_total", {"operation": operation})
        or 0.0
    )


def test_the_metered_store_times_awaited_calls_and_passes_watches_through() -> None:
    """Each awaited store call is one observation of its operation; a lost race is also a failure;
    watch generators and attributes come through unchanged."""

    async def body() -> None:
        inner = MemoryStore()
        store = metrics.metered(inner)
        policy = policy_pb2.Policy(name="p", revision=1)
        listed, created, failed = _count("list_nodes"), _count("create_policy"), _failures("create_policy")
        await store.list_nodes()
        await store.create_policy(policy)
        with pytest.raises(Conflict):
            await store.create_policy(policy)
        assert _count("list_nodes") == listed + 1
        assert _count("create_policy") == created + 2
        assert _failures("create_policy") == failed + 1
        watch = store.watch_policy_state(0)
        assert hasattr(watch, "__anext__")
        first = await asyncio.wait_for(anext(watch), 5)
        assert first >= 1
        await watch.aclose()  # type: ignore[attr-defined]
        assert (
            metrics.REGISTRY.get_sample_value(
                "telltale_store_request_duration_seconds_count", {"operation": "watch_policy_state"}
            )
            is None
        )
        assert store.revision == inner.revision  # type: ignore[attr-defined]

    asyncio.run(body())
