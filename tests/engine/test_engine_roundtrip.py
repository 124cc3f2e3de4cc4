"""Round trips: document -> Policy -> document, and Policy -> message -> Policy."""

from __future__ import annotations

from hypothesis import given
from policygen import policies

from telltale.engine.model import Policy
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


# Generated policies of every alert type: any valid policy survives both round trips.


@given(policies())
def test_any_policy_round_trips_through_its_document(policy: Policy) -> None:
    """parse_document(to_document(p)) == p for every valid policy."""
    assert parse_document(to_document(policy), builtin=policy.builtin) == policy


@given(policies())
def test_any_policy_round_trips_through_its_message(policy: Policy) -> None:
    """from_proto(to_proto(p)) == p for every valid policy, including across the wire encoding."""
    wire = policy_pb2.Policy.FromString(to_proto(policy).SerializeToString())
    assert from_proto(wire) == policy
