"""The alert catalog and its wire description."""

from __future__ import annotations

import re

import pytest

from telltale.engine.catalog import CATALOG, AlertTypeSpec, to_proto
from telltale.engine.checks import CHECKS, NODE_CHECKS
from telltale.engine.params import PARAM_TYPES, coerce, from_proto_value
from telltale.v1 import common_pb2

SPECS = list(CATALOG.values())
PREFIXES = {
    common_pb2.CATEGORY_NETWORK: "network",
    common_pb2.CATEGORY_PROCESS: "process",
    common_pb2.CATEGORY_FILE: "file",
    common_pb2.CATEGORY_LIBRARY: "library",
    common_pb2.CATEGORY_LIBRARY_CALL: "call",
    common_pb2.CATEGORY_NODE: "node",
}


def test_every_catalog_type_has_a_check_and_every_check_a_type() -> None:
    """Checks and catalog entries correspond one to one: event checks for event types, node
    checks for host-state types."""
    assert set(CHECKS) == {s.id for s in SPECS if not s.node_state}
    assert set(NODE_CHECKS) == {s.id for s in SPECS if s.node_state}


def test_catalog_covers_every_category_with_at_least_35_types() -> None:
    """The catalog has at least 35 types, each category several, grouped by category in order."""
    assert len(CATALOG) >= 35
    per_category = {c: sum(s.category == c for s in SPECS) for c in common_pb2.Category.values()}
    del per_category[common_pb2.CATEGORY_UNSPECIFIED]
    assert min(per_category.values()) >= 3, per_category
    order = [s.category for s in SPECS]
    runs = [c for i, c in enumerate(order) if i == 0 or order[i - 1] != c]
    assert len(runs) == len(set(runs)), "each category's types are listed together"


@pytest.mark.parametrize(
    "type_id",
    [
        "network.restricted_country",
        "network.blocklisted_destination",
        "network.listen_all_interfaces",
        "network.privileged_port",
        "network.raw_socket",
        "network.plaintext_protocol",
        "network.cloud_metadata",
        "network.unexpected_udp",
        "process.shell_launched",
        "process.interpreter_launched",
        "process.exec_from_writable_dir",
        "process.privilege_gain",
        "process.ptrace",
        "process.memfd_exec",
        "process.unexpected_binary",
        "file.credential_store",
        "file.system_config_write",
        "file.key_material",
        "file.process_memory",
        "library.writable_location",
        "library.foreign_preload",
        "library.write_execute_memory",
        "call.unsafe_function",
        "call.weak_crypto",
        "call.old_tls",
        "node.ip_forwarding",
        "node.promiscuous_interface",
        "node.aslr_disabled",
        "node.ptrace_scope_permissive",
        "node.secret_environment",
        "node.workload_as_root",
        "node.dangerous_capabilities",
        "node.public_listener",
    ],
)
def test_catalog_has_the_issue_types(type_id: str) -> None:
    """Every behaviour the catalog promises has its alert type."""
    assert type_id in CATALOG


def test_blockable_types_are_network_destination_types() -> None:
    """Only network types about a destination may block, and they all may."""
    blockable = {s.id for s in SPECS if s.blockable}
    assert blockable == {
        s.id
        for s in SPECS
        if s.category == common_pb2.CATEGORY_NETWORK and "destination" in s.exception_scopes
    }


@pytest.mark.parametrize("spec", [s for s in SPECS if s.node_state], ids=lambda s: s.id)
def test_host_state_types_can_ignore_nodes(spec: AlertTypeSpec) -> None:
    """Every host-state type has an ignore_nodes parameter, since exceptions cannot name nodes."""
    param = spec.param("ignore_nodes")
    assert param is not None
    assert (param.type, param.default) == ("strings", ())


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
    assert bool(spec.event_kinds) != spec.node_state  # judged on events, or on host state
    assert common_pb2.EVENT_KIND_UNSPECIFIED not in spec.event_kinds
    assert spec.id.partition(".")[0] == PREFIXES[spec.category]
    assert spec.title[0].isupper()
    assert not spec.title.endswith(".")
    for text in (spec.description, spec.rationale, spec.remediation):
        assert text.endswith("."), text
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
        assert param.description.strip()
    assert len({p.name for p in spec.params}) == len(spec.params)


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
