"""The alert catalog and its wire description."""

from __future__ import annotations

import re

import pytest

from telltale.engine.catalog import CATALOG, AlertTypeSpec, to_proto
from telltale.engine.checks import CHECKS
from telltale.engine.params import PARAM_TYPES, coerce, from_proto_value
from telltale.v1 import common_pb2

SPECS = list(CATALOG.values())


def test_every_catalog_type_has_a_check_and_every_check_a_type() -> None:
    """Checks and catalog entries correspond one to one."""
    assert set(CHECKS) == set(CATALOG)


def test_catalog_holds_the_first_six_types() -> None:
    """The catalog carries at least the six types of the first release."""
    assert {
        "process.shell_launched",
        "process.exec_from_writable_dir",
        "network.listen_all_interfaces",
        "network.privileged_port",
        "network.blocklisted_destination",
        "node.workload_as_root",
    } <= set(CATALOG)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.id)
def test_catalog_entry_is_complete(spec: AlertTypeSpec) -> None:
    """Each entry has its texts, a real category and priority, event kinds, and an "area.name" id."""
    for text in (spec.title, spec.description, spec.rationale, spec.remediation):
        assert text.strip()
    assert spec.category != common_pb2.CATEGORY_UNSPECIFIED
    assert spec.default_priority in (1, 2, 3, 4)
    assert spec.event_kinds
    assert common_pb2.EVENT_KIND_UNSPECIFIED not in spec.event_kinds
    assert spec.exception_scopes <= {"path", "destination"}
    assert re.fullmatch(r"[a-z]+\.[a-z0-9_]+", spec.id)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.id)
def test_parameter_defaults_pass_their_own_validation(spec: AlertTypeSpec) -> None:
    """Every parameter default is a valid value of its declared type."""
    for param in spec.params:
        assert param.type in PARAM_TYPES
        errors: list = []
        assert coerce(param, param.default, "p", errors) == param.default
        assert errors == []


def test_alert_type_message_carries_the_entry() -> None:
    """to_proto describes an alert type, including parameter types and defaults."""
    message = to_proto(CATALOG["process.shell_launched"])
    assert message.id == "process.shell_launched"
    assert message.category == common_pb2.CATEGORY_PROCESS
    assert message.default_priority == common_pb2.PRIORITY_P2
    assert not message.blockable
    (param,) = message.params
    assert (param.name, param.type) == ("shells", "strings")
    assert "bash" in from_proto_value(param.default)  # type: ignore[operator]
    assert to_proto(CATALOG["network.blocklisted_destination"]).blockable
    assert from_proto_value(to_proto(CATALOG["network.privileged_port"]).params[0].default) == 1023
