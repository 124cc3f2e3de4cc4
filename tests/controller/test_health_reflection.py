"""Generic gRPC tools can find and call a real controller: server reflection lists every telltale
service and describes its methods; health checking says SERVING, then NOT_SERVING on shutdown."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from telltale.controller.etcd import EmbeddedEtcd
from telltale.controller.server import SERVICE_NAMES
from telltale.devcluster import LocalCluster

pytestmark = pytest.mark.e2e

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _controller(etcd: EmbeddedEtcd, workdir: Path) -> LocalCluster:
    cluster = LocalCluster(workdir, etcd_endpoint=etcd.endpoint, etcd_prefix=f"/discover-{uuid.uuid4().hex}/")
    cluster.start_controller()
    return cluster


@pytest.fixture(scope="module")
def controller(etcd: EmbeddedEtcd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A controller process on the module's etcd, stopped at the end."""
    cluster = _controller(etcd, tmp_path_factory.mktemp("discover"))
    try:
        yield cluster
    finally:
        cluster.stop()


def test_reflection_lists_every_telltale_service_and_describes_its_methods(controller: LocalCluster) -> None:
    """The reflection client discovers each service, and a method found that way can be called."""
    with grpc.insecure_channel(controller.api) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert set(SERVICE_NAMES) <= services
        assert {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= services
        pool = descriptor_pool.DescriptorPool(database)
        for name in SERVICE_NAMES:
            assert pool.FindServiceByName(name).methods, f"{name} has no methods"
        method = pool.FindServiceByName("telltale.v1.CatalogService").methods_by_name["GetAlertType"]
        assert method.input_type.full_name == "telltale.v1.GetAlertTypeRequest"
        assert [f.name for f in method.input_type.fields] == ["id"]
        # Call it with messages built from the discovered descriptors only, as grpcurl does.
        request_type = message_factory.GetMessageClass(method.input_type)
        response_type = message_factory.GetMessageClass(method.output_type)
        call = channel.unary_unary(
            f"/{method.containing_service.full_name}/{method.name}",
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )
        answer = call(request_type(id="process.shell_launched"), timeout=10)
        assert answer.alert_type.id == "process.shell_launched"
        assert answer.alert_type.title


def test_health_answers_for_the_server_and_each_service(controller: LocalCluster) -> None:
    """SERVING for "" and every telltale service; NOT_FOUND for a service it does not have."""
    with grpc.insecure_channel(controller.api) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in ("", *SERVICE_NAMES):
            assert stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status == SERVING
        with pytest.raises(grpc.RpcError) as unknown:
            stub.Check(health_pb2.HealthCheckRequest(service="telltale.v1.NoSuchService"), timeout=5)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_turns_not_serving_when_the_controller_is_asked_to_stop(
    etcd: EmbeddedEtcd, tmp_path: Path
) -> None:
    """A health watch sees SERVING, then NOT_SERVING once SIGTERM arrives, before the server goes."""
    cluster = _controller(etcd, tmp_path)
    try:
        with grpc.insecure_channel(cluster.api) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="telltale.v1.AlertService"), timeout=30
            )
            updates = iter(watch)
            assert next(updates).status == SERVING
            cluster.processes["controller"].send_signal(signal.SIGTERM)
            assert next(updates).status == NOT_SERVING
            watch.cancel()
        assert cluster.processes["controller"].wait(timeout=30) == 0
    finally:
        cluster.stop()
