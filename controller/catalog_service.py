"""CatalogService: the alert types compiled into this release."""

from __future__ import annotations

from typing import Any

import grpc

from telltale.controller.errors import InvalidArgument, NotFound
from telltale.controller.rpc import page_size, require, unary
from telltale.engine import catalog
from telltale.v1 import catalog_pb2, catalog_pb2_grpc, common_pb2


class CatalogService(catalog_pb2_grpc.CatalogServiceServicer):
    """Serves the alert catalog compiled into this release."""

    @unary
    async def ListAlertTypes(
        self, request: catalog_pb2.ListAlertTypesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> catalog_pb2.ListAlertTypesResponse:
        if request.category and request.category not in common_pb2.Category.values():
            raise InvalidArgument("category", f"{request.category} is not a category")
        specs = sorted(catalog.CATALOG.values(), key=lambda s: s.id)
        if request.category:
            specs = [s for s in specs if s.category == request.category]
        if request.page.page_token:
            specs = [s for s in specs if s.id > request.page.page_token]
        size = page_size(request.page.page_size)
        response = catalog_pb2.ListAlertTypesResponse(alert_types=[catalog.to_proto(s) for s in specs[:size]])
        if len(specs) > size:
            response.page.next_page_token = specs[size - 1].id
        return response

    @unary
    async def GetAlertType(
        self, request: catalog_pb2.GetAlertTypeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> catalog_pb2.GetAlertTypeResponse:
        type_id = require(request.id, "id")
        spec = catalog.CATALOG.get(type_id)
        if spec is None:
            raise NotFound(f"no alert type {type_id!r} in the catalog")
        return catalog_pb2.GetAlertTypeResponse(alert_type=catalog.to_proto(spec))
