"""InventoryService: the nodes, applications and workloads recorded in the store."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import grpc

from telltale.controller.errors import NotFound
from telltale.controller.policies import PolicyView
from telltale.controller.rpc import check_length, decode_token, paged, require, unary
from telltale.controller.store import Store
from telltale.v1 import common_pb2, inventory_pb2, inventory_pb2_grpc


class InventoryService(inventory_pb2_grpc.InventoryServiceServicer):
    """Serves inventory listings."""

    def __init__(self, store: Store, policies: PolicyView) -> None:
        self._store = store
        self._policies = policies

    @unary
    async def ListNodes(
        self, request: inventory_pb2.ListNodesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> inventory_pb2.ListNodesResponse:
        nodes, page = paged("nodes", request.page, await self._store.list_nodes(), lambda n: n.node_id)
        for node in nodes:
            node.in_sync = node.applied_policy_revision == self._policies.revision
        return inventory_pb2.ListNodesResponse(nodes=nodes, page=page)

    @unary
    async def GetNode(
        self, request: inventory_pb2.GetNodeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> inventory_pb2.GetNodeResponse:
        node_id = require(request.node_id, "node_id")
        stored = await self._store.get_node(node_id)
        if stored is None:
            raise NotFound(f"no node {node_id!r}")
        node = stored.value
        node.in_sync = node.applied_policy_revision == self._policies.revision
        return inventory_pb2.GetNodeResponse(node=node)

    @unary
    async def ListApplications(
        self, request: inventory_pb2.ListApplicationsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> inventory_pb2.ListApplicationsResponse:
        if request.page.page_token:  # refuse a bad token before reading the store
            decode_token("applications", request.page.page_token)
        components: dict[str, set[str]] = defaultdict(set)
        counts: dict[str, int] = defaultdict(int)
        for workload in await self._store.list_workloads():
            counts[workload.application] += 1
            if workload.component:
                components[workload.application].add(workload.component)
        policy_set = self._policies.policy_set
        apps = [
            inventory_pb2.ApplicationSummary(
                name=name,
                components=sorted(components[name]),
                policy=policy_set.name_for(common_pb2.Workload(application=name)),
                workloads=counts[name],
            )
            for name in sorted(counts)
        ]
        chosen, page = paged("applications", request.page, apps, lambda a: a.name)
        return inventory_pb2.ListApplicationsResponse(applications=chosen, page=page)

    @unary
    async def ListWorkloads(
        self, request: inventory_pb2.ListWorkloadsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> inventory_pb2.ListWorkloadsResponse:
        check_length(request.application, "application")
        check_length(request.node_id, "node_id")
        if request.page.page_token:  # refuse a bad token before reading the store
            decode_token("workloads", request.page.page_token)
        workloads = [
            w
            for w in await self._store.list_workloads()
            if (not request.application or w.application == request.application)
            and (not request.node_id or w.node_id == request.node_id)
        ]
        chosen, page = paged("workloads", request.page, workloads, lambda w: w.id)
        return inventory_pb2.ListWorkloadsResponse(workloads=chosen, page=page)
