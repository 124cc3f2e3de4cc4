"""CatalogService: the alert types compiled into this release."""

from __future__ import annotations

from typing import Any

import grpc

from telltale.controller.errors import NotFound
from telltale.controller.rpc import check_enum, paged, require, unary
from telltale.engine import catalog
from telltale.v1 import catalog_pb2, catalog_pb2_grpc, common_pb2


class CatalogService(catalog_pb2_grpc.CatalogServiceServicer):
    """Serves the alert catalog compiled into this release."""

    @unary
    async def ListAlertTypes(
        self, request: catalog_pb2.ListAlertTypesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> catalog_pb2.ListAlertTypesResponse:
        check_enum(request.category, common_pb2.Category.DESCRIPTOR, "category", unspecified_ok=True)
        specs = [
            s for s in catalog.CATALOG.values() if not request.category or s.category == request.category
        ]
        chosen, page = paged("alert-types", request.page, specs, lambda s: s.id)
        return catalog_pb2.ListAlertTypesResponse(
            alert_types=[catalog.to_proto(s) for s in chosen], page=page
        )

    @unary
    async def GetAlertType(
        self, request: catalog_pb2.GetAlertTypeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> catalog_pb2.GetAlertTypeResponse:
        type_id = require(request.id, "id")
        spec = catalog.CATALOG.get(type_id)
        if spec is None:
            raise NotFound(f"no alert type {type_id!r} in the catalog")
        return catalog_pb2.GetAlertTypeResponse(alert_type=catalog.to_proto(spec))
