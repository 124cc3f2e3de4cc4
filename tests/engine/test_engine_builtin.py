"""The built-in policy documents shipped in policies/."""

from __future__ import annotations

from importlib.resources import files

import pytest

from telltale.engine.builtin import DEFAULT_POLICY, load_builtin_policies
from telltale.engine.catalog import CATALOG
from telltale.engine.policy import parse_document, to_document

DOCUMENTS = sorted(e.name for e in files("telltale.policies").iterdir() if e.name.endswith(".yaml"))


def test_policies_directory_ships_documents() -> None:
    """The package data holds the two built-in documents."""
    assert {"standard.yaml", "max-alert.yaml"} <= set(DOCUMENTS)


@pytest.mark.parametrize("name", DOCUMENTS)
def test_every_shipped_document_validates(name: str) -> None:
    """Every YAML document in policies/ parses and validates."""
    text = files("telltale.policies").joinpath(name).read_text(encoding="utf-8")
    policy = parse_document(text, builtin=True)
    assert policy.builtin
    assert text.startswith("#"), "each built-in document opens with a comment saying what it is for"


@pytest.mark.parametrize("name", DOCUMENTS)
def test_every_shipped_document_round_trips(name: str) -> None:
    """A built-in policy written back as a document reads back identical."""
    policy = parse_document(
        files("telltale.policies").joinpath(name).read_text(encoding="utf-8"), builtin=True
    )
    assert parse_document(to_document(policy), builtin=True) == policy


def test_builtin_policies_are_loaded_by_name_and_include_the_default() -> None:
    """load_builtin_policies returns Standard (the default) and Max Alert, marked builtin."""
    policies = load_builtin_policies()
    assert {"Standard", "Max Alert"} <= set(policies)
    assert DEFAULT_POLICY in policies
    assert all(p.builtin and p.name == name for name, p in policies.items())


def test_max_alert_enables_every_catalog_type() -> None:
    """Max Alert has an enabled rule for every alert type of the catalog."""
    rules = load_builtin_policies()["Max Alert"].rules
    missing = [t for t in CATALOG if t not in rules or not rules[t].enabled]
    assert missing == []


STANDARD_OFF = {
    "process.unexpected_binary",
    "network.privileged_port",
    "network.unexpected_udp",
    "network.cloud_metadata",
    "network.plaintext_protocol",
    "file.key_material",
    "call.unsafe_function",
    "call.weak_crypto",
    "node.secret_environment",
    "node.kernel_hardening",
}


def test_standard_enables_the_production_set_with_catalog_priorities() -> None:
    """Standard lists every type, enables all but the noisy or allowlist ones, at catalog priorities."""
    rules = load_builtin_policies()["Standard"].rules
    assert set(rules) == set(CATALOG)
    enabled = {t for t, r in rules.items() if r.enabled}
    assert enabled == set(CATALOG) - STANDARD_OFF
    assert all(rules[t].priority == CATALOG[t].default_priority for t in rules)


def test_standard_blocklist_and_restricted_countries_are_empty() -> None:
    """Standard ships no blocklisted network and no restricted country: operators choose them."""
    rules = load_builtin_policies()["Standard"].rules
    assert rules["network.blocklisted_destination"].params["networks"] == ()
    assert rules["network.restricted_country"].params["countries"] == ()


def test_standard_parameters_are_the_catalog_defaults() -> None:
    """Standard changes no parameter from its catalog default."""
    rules = load_builtin_policies()["Standard"].rules
    changed = [
        (t, p.name) for t, r in rules.items() for p in CATALOG[t].params if r.params[p.name] != p.default
    ]
    assert changed == []
