"""The declaration of one alert type of the catalog (see :mod:`telltale.engine.catalog`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from telltale.engine.params import ParamSpec
from telltale.v1 import common_pb2

__all__ = ["AlertTypeSpec", "Category", "EventKind", "Priority"]

Category: TypeAlias = common_pb2.Category.ValueType
Priority: TypeAlias = common_pb2.Priority.ValueType
EventKind: TypeAlias = common_pb2.EventKind.ValueType


@dataclass(frozen=True, slots=True)
class AlertTypeSpec:
    """One entry of the catalog.

    An alert type is judged either on workload events or on the host state agents report:

    - ``event_kinds`` are the kinds of events the type's check looks at; evaluation hands each
      event only to the rules whose type lists its kind;
    - ``node_state`` is true for types judged on host state instead (their ``event_kinds`` is
      empty); :func:`telltale.engine.evaluate.evaluate_node_state` runs them.
    """

    id: str
    category: Category
    title: str
    description: str
    rationale: str
    remediation: str
    params: tuple[ParamSpec, ...]
    default_priority: Priority
    blockable: bool
    event_kinds: frozenset[EventKind]
    exception_scopes: frozenset[str] = frozenset()
    """Which of the exception fields ``path`` and ``destination`` mean something for this type
    (``application``, ``component`` and ``binary`` always do)."""
    node_state: bool = False

    def param(self, name: str) -> ParamSpec | None:
        """Return the parameter called ``name``, or None."""
        for spec in self.params:
            if spec.name == name:
                return spec
        return None
