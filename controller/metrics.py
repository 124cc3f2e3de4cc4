"""Prometheus metrics of a controller replica: what it received, evaluated and wrote, and how fast.

Every metric lives in `REGISTRY`, this module's own registry (not prometheus_client's global one),
and is named `telltale_…`; docs/observability.md lists each with its type and meaning, and a test
holds that list equal to the registry. Labels are bounded sets only (an RPC method, a status code,
a store operation, created/updated): never a node, workload or alert identity.

Three ways in:
  * counters the code increments where things happen (`observe_batch`, `alerts_committed`);
  * `metered(store)`, a proxy that times every awaited Store method by operation;
  * `RpcMetrics`, a grpc.aio server interceptor that counts every RPC by method and status code;
and `StateCollector`, read at scrape time: the agent streams this replica holds and the policy
revision it pushes.

`serve_metrics` serves the registry over HTTP (`GET /metrics`) from a daemon thread.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any, Protocol, cast

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from telltale.controller.store import Store
from telltale.v1 import agent_pb2, alert_pb2, inventory_pb2

REGISTRY = CollectorRegistry(auto_describe=True)

# Seconds; etcd answers in ~0.5 ms on loopback, a transaction of 100 alerts in a few ms.
_STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Seconds from an event to the commit of its batch: milliseconds live, hours after a spool replay.
_LAG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0)
_RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

BATCHES_RECEIVED = Counter(
    "telltale_batches_received", "Event batches received from agents.", registry=REGISTRY
)
BATCHES_DUPLICATE = Counter(
    "telltale_batches_duplicate",
    "Batches received again after they were recorded (a resend after a lost acknowledgement); "
    "acknowledged, not counted again.",
    registry=REGISTRY,
)
EVENTS_RECEIVED = Counter(
    "telltale_events_received", "Events received from agents, in every batch.", registry=REGISTRY
)
EVENTS_EVALUATED = Counter(
    "telltale_events_evaluated",
    "Events judged by the policies and recorded (the events of batches that were not duplicates).",
    registry=REGISTRY,
)
FINDINGS = Counter("telltale_findings", "Findings the policies raised on recorded events.", registry=REGISTRY)
ALERTS_WRITTEN = Counter(
    "telltale_alerts_written",
    "Alert records committed by evaluation: kind=created for a new fingerprint, updated for one more "
    "occurrence of a known one.",
    ["kind"],
    registry=REGISTRY,
)
RECORDS_DROPPED = Counter(
    "telltale_agent_dropped_records",
    "Records agents reported lost before they reached a batch (shim or agent queues full).",
    registry=REGISTRY,
)
RECORDS_MALFORMED = Counter(
    "telltale_agent_malformed_records",
    "Malformed shim records agents reported and dropped.",
    registry=REGISTRY,
)
SEQUENCE_GAPS = Counter(
    "telltale_sequence_gaps",
    "Batches missing from agents' sequence numbers, as this replica recorded them.",
    registry=REGISTRY,
)
STREAM_LAG = Histogram(
    "telltale_stream_lag_seconds",
    "Seconds from the oldest event of a batch to the commit of that batch.",
    buckets=_LAG_BUCKETS,
    registry=REGISTRY,
)
STORE_LATENCY = Histogram(
    "telltale_store_request_duration_seconds",
    "Seconds one store operation took (one or a few etcd requests), by operation.",
    ["operation"],
    buckets=_STORE_BUCKETS,
    registry=REGISTRY,
)
STORE_FAILURES = Counter(
    "telltale_store_request_failures",
    "Store operations that raised (lost compare-and-swap races included), by operation.",
    ["operation"],
    registry=REGISTRY,
)
RPCS_HANDLED = Counter(
    "telltale_grpc_server_handled",
    "RPCs completed, by service, method and status code.",
    ["service", "method", "code"],
    registry=REGISTRY,
)
RPC_LATENCY = Histogram(
    "telltale_grpc_server_handling_seconds",
    "Seconds a unary RPC took, by service and method.",
    ["service", "method"],
    buckets=_RPC_BUCKETS,
    registry=REGISTRY,
)


# -- counters of the agent stream and of ingestion ------------------------------------------------
class _Outcome(Protocol):
    """What `observe_batch` reads of ingest.BatchOutcome."""

    @property
    def duplicate(self) -> bool: ...
    @property
    def findings(self) -> int: ...


def observe_batch(
    batch: agent_pb2.EventBatch,
    outcome: _Outcome,
    before: inventory_pb2.Node,
    after: inventory_pb2.Node,
    committed_ns: int,
) -> None:
    """Count one batch handled on an agent stream, recorded (or found a duplicate) at `committed_ns`;
    `before` and `after` are the node record around it."""
    BATCHES_RECEIVED.inc()
    EVENTS_RECEIVED.inc(len(batch.events))
    if outcome.duplicate:
        BATCHES_DUPLICATE.inc()
        return
    EVENTS_EVALUATED.inc(len(batch.events))
    FINDINGS.inc(outcome.findings)
    RECORDS_DROPPED.inc(batch.dropped_records)
    RECORDS_MALFORMED.inc(batch.malformed_records)
    if after.sequence_gaps > before.sequence_gaps:
        SEQUENCE_GAPS.inc(after.sequence_gaps - before.sequence_gaps)
    times = [e.time.ToNanoseconds() for e in batch.events if e.HasField("time")]
    if times:
        STREAM_LAG.observe(max(committed_ns - min(times), 0) / 1e9)


def alerts_committed(alerts: Iterable[tuple[alert_pb2.Alert, int]]) -> None:
    """Count alert records just committed; each comes with the revision it was expected at (0 = new)."""
    for _, expected in alerts:
        ALERTS_WRITTEN.labels("created" if expected == 0 else "updated").inc()


# -- the store ------------------------------------------------------------------------------------
class MeteredStore:
    """A Store proxy that times each awaited method (STORE_LATENCY by operation) and counts its
    failures; anything else (watch generators, MemoryStore's extras) passes through untouched."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._wrapped: dict[str, Callable[..., Awaitable[Any]]] = {}

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        if name.startswith("_") or not inspect.iscoroutinefunction(attribute):
            return attribute
        wrapped = self._wrapped.get(name)
        if wrapped is None:
            wrapped = self._wrapped[name] = _timed(name, attribute)
        return wrapped


def _timed(operation: str, method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    latency = STORE_LATENCY.labels(operation)
    failures = STORE_FAILURES.labels(operation)

    @functools.wraps(method)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return await method(*args, **kwargs)
        except BaseException:
            failures.inc()
            raise
        finally:
            latency.observe(time.perf_counter() - start)

    return timed


def metered(store: Store) -> Store:
    """`store` behind a MeteredStore, typed as the Store it stands for."""
    return cast(Store, MeteredStore(store))


# -- RPCs -----------------------------------------------------------------------------------------
def _split(full_method: str) -> tuple[str, str]:
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service, method


def _code(context: grpc.aio.ServicerContext[Any, Any], error: BaseException | None) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):  # grpc.aio keeps the raw cygrpc value
        for status in grpc.StatusCode:
            if status.value[0] == code:
                return status.name
    if error is None:
        return grpc.StatusCode.OK.name
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED.name
    return grpc.StatusCode.UNKNOWN.name


class RpcMetrics(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Counts every RPC of a registered method by service, method and final status code, and times
    unary ones. Put it first, so that what later interceptors refuse is counted too."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:  # an unknown method: not counted, its name is the caller's choice
            return handler
        service, method = _split(handler_call_details.method)
        handled = functools.partial(RPCS_HANDLED.labels, service, method)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _unary(handler.unary_unary, handled, RPC_LATENCY.labels(service, method)),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _streaming(handler.unary_stream, handled),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                _streaming(handler.stream_stream, handled),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # client streaming: the API has none


def _unary(behavior: Callable[..., Any], handled: Callable[[str], Counter], latency: Histogram) -> Any:
    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        start = time.perf_counter()
        error: BaseException | None = None
        try:
            return await behavior(request, context)
        except BaseException as exc:
            error = exc
            raise
        finally:
            latency.observe(time.perf_counter() - start)
            handled(_code(context, error)).inc()

    return unary


def _streaming(behavior: Callable[..., Any], handled: Callable[[str], Counter]) -> Any:
    if inspect.isasyncgenfunction(behavior):

        async def generator(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            error: BaseException | None = None
            try:
                async for item in behavior(request, context):
                    yield item
            except BaseException as exc:
                error = exc
                raise
            finally:
                handled(_code(context, error)).inc()

        return generator

    async def writer(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        error: BaseException | None = None
        try:
            return await behavior(request, context)
        except BaseException as exc:
            error = exc
            raise
        finally:
            handled(_code(context, error)).inc()

    return writer


# -- state read at scrape time --------------------------------------------------------------------
class _Session(Protocol):
    """What the collector reads of an agent stream (agent_service._Session)."""

    node: Any  # Versioned[inventory_pb2.Node]

    @property
    def outbound(self) -> _Depth: ...


class _Depth(Protocol):
    """Anything that says how many messages wait in it (a stream's outbound mailbox)."""

    def qsize(self) -> int: ...


class _Policies(Protocol):
    @property
    def revision(self) -> int: ...


# The agent streams open on this replica: the agent service adds a stream when it starts and
# discards it when it ends. Read from the scrape thread, so iterate over a copy.
SESSIONS: set[Any] = set()
_SESSIONS_LOCK = threading.Lock()


def stream_opened(session: Any) -> None:
    """Track an agent stream until `stream_closed`."""
    with _SESSIONS_LOCK:
        SESSIONS.add(session)


def stream_closed(session: Any) -> None:
    """Stop tracking an agent stream."""
    with _SESSIONS_LOCK:
        SESSIONS.discard(session)


class StateCollector(Collector):
    """Gauges computed at scrape time from the replica's agent streams and its policy view."""

    def __init__(self, policies: _Policies) -> None:
        self._policies = policies

    def collect(self) -> Iterator[Metric]:
        with _SESSIONS_LOCK:
            sessions: list[_Session] = list(SESSIONS)
        revision = self._policies.revision
        in_sync = sum(1 for s in sessions if s.node.value.applied_policy_revision == revision)
        yield GaugeMetricFamily(
            "telltale_agents_connected", "Agent streams open on this replica.", value=len(sessions)
        )
        yield GaugeMetricFamily(
            "telltale_policy_revision",
            "The policy-state revision this replica pushes to its agents.",
            value=revision,
        )
        synced = GaugeMetricFamily(
            "telltale_agents_policy_sync",
            "Agents connected to this replica whose applied policy revision is (state=in_sync) or is "
            "not yet (state=out_of_sync) the one pushed.",
            labels=["state"],
        )
        synced.add_metric(["in_sync"], in_sync)
        synced.add_metric(["out_of_sync"], len(sessions) - in_sync)
        yield synced
        yield GaugeMetricFamily(
            "telltale_agent_outbound_queue_depth",
            "Messages waiting to be written to agents, summed over this replica's streams.",
            value=sum(s.outbound.qsize() for s in sessions),
        )


# -- the endpoint ---------------------------------------------------------------------------------
class MetricsEndpoint:
    """The HTTP server of `/metrics`, running in a daemon thread until `close()`."""

    def __init__(self, host: str, port: int) -> None:
        self._server, self._thread = start_http_server(port, addr=host, registry=REGISTRY)
        self.port: int = self._server.server_address[1]

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve_metrics(host: str, port: int) -> MetricsEndpoint:
    """Serve `/metrics` on host:port (port 0 picks a free one); raises OSError when it cannot bind."""
    return MetricsEndpoint(host, port)
