"""Fixtures of the Store contract: each test body runs against MemoryStore and against EtcdStore."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import aetcd
import pytest
from storekit import Body, Harness, Run

from telltale.controller.etcd import EmbeddedEtcd, spawn_embedded_etcd, wait_ready
from telltale.controller.etcdstore import EtcdStore
from telltale.controller.memstore import MemoryStore


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedEtcd]:
    """One embedded etcd for the module, always stopped."""
    server = spawn_embedded_etcd(tmp_path_factory.mktemp("etcd"))
    try:
        wait_ready(server)
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["memory", "etcd"])
def run(request: pytest.FixtureRequest) -> Run:
    """Run an async test body against a fresh store of the parametrised kind.

    On etcd each test gets its own key prefix, so tests of one module share the server only."""
    if request.param == "memory":

        async def with_memory(body: Body) -> None:
            store = MemoryStore()
            await body(Harness(store, store.compact))

        return lambda body: asyncio.run(with_memory(body))

    server: EmbeddedEtcd = request.getfixturevalue("etcd")
    host, port = server.endpoint.split(":")

    async def with_etcd(body: Body) -> None:
        client = aetcd.Client(host=host, port=int(port), timeout=10)
        await client.connect()
        try:
            store = EtcdStore(client, prefix=f"/test/{uuid.uuid4().hex}/")
            await body(Harness(store, client.compact))
        finally:
            await client.close()

    return lambda body: asyncio.run(with_etcd(body))
