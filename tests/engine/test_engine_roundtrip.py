"""Round trips: document -> Policy -> document, and Policy -> message -> Policy."""

from __future__ import annotations

import ipaddress
from types import MappingProxyType

from hypothesis import given
from hypothesis import strategies as st

from telltale.engine.catalog import CATALOG, AlertTypeSpec
from telltale.engine.model import Policy, Rule, RuleException
from telltale.engine.params import ParamSpec, ParamValue
from telltale.engine.policy import from_proto, parse_document, to_document, to_proto
from telltale.v1 import policy_pb2

RICH = """\
apiVersion: telltale.dev/v1
kind: AlertPolicy
metadata:
  name: Shop production
  description: "Tuned for the shop: 'yes', no, null and 0x10 stay text."
  revision: 7
  clonedFrom: Standard
  updatedBy: alice@example.com
  updatedAt: 2026-05-01T10:20:30.123456789Z
spec:
  rules:
    process.shell_launched:
      priority: P1
      params:
        shells: [sh, bash, "yes", "null"]
      exceptions:
        - application: shop
          binary: /usr/bin/*
          reason: "health checks: curl | sh"
          expires: 2027-01-01T00:00:00.000000001+01:00
    network.blocklisted_destination:
      action: block
      params:
        networks: [203.0.113.0/24, "2001:db8::/32"]
      exceptions:
        - {destination: 203.0.113.7, reason: gateway}
    network.privileged_port:
      enabled: false
"""


def test_rich_document_round_trips() -> None:
    """A document using every feature reads back identical after being written out."""
    policy = parse_document(RICH)
    assert parse_document(to_document(policy)) == policy
    assert policy.updated_at_ns % 1_000_000_000 == 123_456_789
    rule = policy.rules["process.shell_launched"]
    assert rule.params["shells"] == ("sh", "bash", "yes", "null")
    assert rule.exceptions[0].expires_ns == 1_798_758_000_000_000_001


def test_rich_policy_round_trips_through_the_message() -> None:
    """A policy encoded as a message decodes identical."""
    policy = parse_document(RICH)
    assert from_proto(to_proto(policy)) == policy


def test_written_document_lists_rules_in_catalog_order_with_every_parameter() -> None:
    """to_document writes rules in catalog order, every parameter explicit."""
    text = to_document(parse_document(RICH))
    assert text.index("process.shell_launched") < text.index("network.privileged_port")
    assert "max_port: 1023" in text


# Generated policies: any valid policy survives both round trips.

_words = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=12)
_program = _words.filter(lambda w: "/" not in w)
_path = _words.map(lambda w: "/" + w)


@st.composite
def _network(draw: st.DrawFn) -> str:
    address = draw(st.ip_addresses())
    prefix = draw(st.integers(0, address.max_prefixlen))
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def _value(param: ParamSpec) -> st.SearchStrategy[ParamValue]:
    if param.name in ("ignore_ports",):
        return st.lists(st.integers(0, 65535), max_size=4).map(tuple)
    if param.name == "max_port":
        return st.integers(0, 65535)
    item = {"shells": _program, "directories": _path, "networks": _network()}[param.name]
    return st.lists(item, max_size=4).map(tuple)


@st.composite
def _exception(draw: st.DrawFn, spec: AlertTypeSpec) -> RuleException:
    scopes = {"application": _words, "component": _words, "binary": _path}
    if "path" in spec.exception_scopes:
        scopes["path"] = _path
    if "destination" in spec.exception_scopes:
        scopes["destination"] = _network()
    chosen = draw(st.lists(st.sampled_from(sorted(scopes)), min_size=1, max_size=3, unique=True))
    return RuleException(
        reason=draw(_words.filter(str.strip)),
        expires_ns=draw(st.none() | st.integers(0, 253_402_300_799_999_999_999)),
        **{name: draw(scopes[name]) for name in chosen},
    )


@st.composite
def _rule(draw: st.DrawFn, spec: AlertTypeSpec) -> Rule:
    params = {p.name: draw(_value(p)) for p in spec.params}
    actions = [policy_pb2.RULE_ACTION_ALERT] + ([policy_pb2.RULE_ACTION_BLOCK] if spec.blockable else [])
    return Rule(
        alert_type=spec.id,
        enabled=draw(st.booleans()),
        priority=draw(st.sampled_from([1, 2, 3, 4])),
        action=draw(st.sampled_from(actions)),
        params=MappingProxyType(params),
        exceptions=tuple(draw(st.lists(_exception(spec), max_size=2))),
    )


@st.composite
def _policy(draw: st.DrawFn) -> Policy:
    types = draw(st.lists(st.sampled_from(list(CATALOG)), unique=True))
    return Policy(
        name=draw(st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9 ._-]{0,61}[A-Za-z0-9._-])?", fullmatch=True)),
        description=draw(st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)),
        builtin=draw(st.booleans()),
        revision=draw(st.integers(0, 2**40)),
        rules=MappingProxyType({t: draw(_rule(CATALOG[t])) for t in CATALOG if t in types}),
        cloned_from=draw(st.sampled_from(["", "Standard", "Max Alert"])),
        updated_by=draw(st.text(max_size=10).filter(lambda t: "\x00" not in t) | st.just("")),
        updated_at_ns=draw(st.integers(0, 253_402_300_799_999_999_999)),
    )


@given(_policy())
def test_any_policy_round_trips_through_its_document(policy: Policy) -> None:
    """parse_document(to_document(p)) == p for every valid policy."""
    assert parse_document(to_document(policy), builtin=policy.builtin) == policy


@given(_policy())
def test_any_policy_round_trips_through_its_message(policy: Policy) -> None:
    """from_proto(to_proto(p)) == p for every valid policy, including across the wire encoding."""
    wire = policy_pb2.Policy.FromString(to_proto(policy).SerializeToString())
    assert from_proto(wire) == policy
