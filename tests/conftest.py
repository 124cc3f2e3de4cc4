"""Shared fixtures: a real local cluster (embedded etcd, controller, agent) owned by the tests."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from telltale.devcluster import LocalCluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Controller (with embedded etcd) and agent as real processes on free loopback ports."""
    with LocalCluster(tmp_path_factory.mktemp("cluster")) as local:
        yield local


@pytest.fixture(scope="module")
def channel(cluster: LocalCluster) -> Iterator[grpc.Channel]:
    """A plaintext gRPC channel to the cluster's controller API."""
    with grpc.insecure_channel(cluster.api) as ch:
        yield ch
