"""The alert catalog: every alert type a policy can configure.

An alert type is declared once, in the ``catalog_*`` module of its category (what triggers it,
its parameters, its default priority), and matched by the check of the same id in the
``checks_*`` module of that category. Adding a type means adding one :class:`AlertTypeSpec`
there and one check function; the built-in policy ``Max Alert`` must then enable it (a test says
so). The catalog lists types by category: process, network, file, library, library call, node.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from telltale.engine import catalog_files, catalog_libraries, catalog_network, catalog_node, catalog_process
from telltale.engine.alerttype import AlertTypeSpec, Category, EventKind, Priority
from telltale.engine.params import ParamSpec, to_proto_value
from telltale.v1 import catalog_pb2

__all__ = ["CATALOG", "AlertTypeSpec", "Category", "EventKind", "ParamSpec", "Priority", "to_proto"]


_SPECS: tuple[AlertTypeSpec, ...] = (
    *catalog_process.SPECS,
    *catalog_network.SPECS,
    *catalog_files.SPECS,
    *catalog_libraries.SPECS,
    *catalog_node.SPECS,
)

CATALOG: Mapping[str, AlertTypeSpec] = MappingProxyType({spec.id: spec for spec in _SPECS})
"""Every alert type, by id, in a stable order (the order the catalog lists them)."""


def to_proto(spec: AlertTypeSpec) -> catalog_pb2.AlertType:
    """Describe an alert type as the AlertType message of the catalog API."""
    return catalog_pb2.AlertType(
        id=spec.id,
        category=spec.category,
        title=spec.title,
        description=spec.description,
        rationale=spec.rationale,
        remediation=spec.remediation,
        params=[
            catalog_pb2.AlertTypeParam(
                name=param.name,
                type=param.type,
                description=param.description,
                default=to_proto_value(param.type, param.default),
            )
            for param in spec.params
        ],
        default_priority=spec.default_priority,
        blockable=spec.blockable,
    )
