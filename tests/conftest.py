"""Shared fixtures: a real local cluster (embedded etcd, controller, agent) owned by the tests."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import grpc
import pytest
from netns import host_tables

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


@pytest.fixture(scope="session", autouse=True)
def host_firewall_untouched() -> Iterator[None]:
    """The whole suite leaves the host's own nftables as it found them: agents outside a test's
    namespace run with enforcement off, and enforcement tests work inside namespaces."""
    if os.geteuid() != 0 or shutil.which("nft") is None:
        yield
        return
    before = host_tables()
    yield
    assert host_tables() == before, "the test suite changed the host namespace's nftables tables"
