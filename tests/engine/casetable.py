"""Table-driven alert type cases: one event, one policy, the subjects expected to fire."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import pytest
from eventkit import SHOP_API, compiled, fired

from telltale.engine.catalog import CATALOG
from telltale.engine.evaluate import CompiledPolicy
from telltale.v1 import common_pb2


@dataclass(frozen=True)
class Case:
    """``event`` under a policy holding only ``type_id`` (with ``params`` as inline YAML, e.g.
    ``"{countries: [KP]}"``) raises findings with exactly the subjects ``expected``."""

    name: str
    type_id: str
    event: common_pb2.Event
    expected: tuple[str, ...]
    params: str = ""

    def run(self) -> list[str]:
        return fired(_policy(self.type_id, self.params), self.event, SHOP_API)


@cache
def _policy(type_id: str, params: str) -> CompiledPolicy:
    body = f"{{params: {params}}}" if params else "{}"
    return compiled(f"{type_id}: {body}\n")


def fires(name: str, type_id: str, event: common_pb2.Event, *expected: str, params: str = "") -> object:
    return pytest.param(Case(name, type_id, event, expected, params), id=f"{type_id}:{name}")


def quiet(name: str, type_id: str, event: common_pb2.Event, *, params: str = "") -> object:
    return pytest.param(Case(name, type_id, event, (), params), id=f"{type_id}:{name}")


def uncovered(cases: list[object], category: common_pb2.Category.ValueType) -> list[str]:
    """Event types of ``category`` lacking a case that fires or a case that stays quiet."""
    table = [p.values[0] for p in cases]  # type: ignore[attr-defined]
    missing = []
    for spec in CATALOG.values():
        if spec.category != category or spec.node_state:
            continue
        mine = [c for c in table if c.type_id == spec.id]
        if not any(c.expected for c in mine) or not any(not c.expected for c in mine):
            missing.append(spec.id)
    return missing
