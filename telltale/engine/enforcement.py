"""What a policy's block rules ask agents to refuse: networks in CIDR notation.

Agents enforce with nftables, which sees packets, not processes: a block applies to every
program on the node, and it can only name addresses. So a block rule is turned into networks
here, and what cannot be enforced that way is said, not hidden:

- ``network.blocklisted_destination`` and ``network.cloud_metadata`` block their ``networks``;
  the metadata host names cannot be blocked (name resolution is not seen by the firewall).
- ``network.restricted_country`` blocks the networks the country data places in each country;
  when that data cannot list its networks (the offline data answers single addresses only), the
  rule is reported as not enforced for that country. Incoming connections are not blocked.
- An exception that names a destination makes a hole in the block for that destination, for
  every program on the node: node-wide enforcement cannot be narrower than the exception, and an
  exception is the operator saying the traffic is expected. Exceptions without a destination
  cannot be enforced per program and are reported. Expired exceptions are ignored; the plan is
  recomputed at each policy change, so an exception that expires later keeps its hole until then.

Pure: no I/O, no clock (the caller passes ``now_ns``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

from telltale.engine.countries import CountryLookup, CountryNetworks
from telltale.engine.model import Policy, Rule
from telltale.v1 import policy_pb2

__all__ = ["BlockPlan", "block_plan"]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network

BLOCKLIST = "network.blocklisted_destination"
COUNTRY = "network.restricted_country"
METADATA = "network.cloud_metadata"


@dataclass(frozen=True, slots=True)
class BlockPlan:
    """The networks one policy's block rules refuse (merged, IPv4 first), and what it cannot enforce."""

    networks: tuple[str, ...] = ()
    unenforced: tuple[str, ...] = ()


def block_plan(policy: Policy, countries: CountryLookup, now_ns: int) -> BlockPlan:
    """The block plan of ``policy``: each enabled rule whose action is block, minus the
    destinations of that rule's exceptions in force at ``now_ns`` (an exception of one rule
    never opens another rule's block), merged. Never raises on a validated policy."""
    blocked: list[_Network] = []
    notes: list[str] = []
    for alert_type in sorted(policy.rules):
        rule = policy.rules[alert_type]
        if not rule.enabled or rule.action != policy_pb2.RULE_ACTION_BLOCK:
            continue
        if alert_type in (BLOCKLIST, METADATA):
            networks = _networks(_strings(rule, "networks"))
            if alert_type == METADATA and _strings(rule, "hostnames"):
                notes.append(f"{alert_type}: host names are not blocked, only the listed networks")
        elif alert_type == COUNTRY:
            networks = _country_networks(rule, countries, notes)
        else:
            notes.append(f"{alert_type}: action block has no network enforcement for this alert type")
            continue
        blocked.extend(_subtract(networks, _exception_holes(rule, alert_type, now_ns, notes)))
    return BlockPlan(tuple(str(n) for n in _subtract(blocked, [])), tuple(notes))


def _strings(rule: Rule, name: str) -> tuple[str, ...]:
    value = rule.params.get(name, ())
    return tuple(str(v) for v in value) if isinstance(value, (tuple, list)) else ()


def _networks(texts: Iterable[str]) -> list[_Network]:
    """Validated policies only hold valid networks; anything else is skipped, not raised."""
    networks: list[_Network] = []
    for text in texts:
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            continue
    return networks


def _country_networks(rule: Rule, countries: CountryLookup, notes: list[str]) -> list[_Network]:
    found: list[_Network] = []
    for code in _strings(rule, "countries"):
        if isinstance(countries, CountryNetworks):
            networks, complete = countries.networks(code)
        else:
            networks, complete = (), False
        found.extend(_networks(networks))
        if not complete:
            notes.append(
                f"{COUNTRY}: the country data cannot list the networks of {code}"
                + (f"; only {len(networks)} listed networks are blocked" if networks else "; not blocked")
                + " (configure a MaxMind country database)"
            )
    if rule.params.get("incoming"):
        notes.append(f"{COUNTRY}: incoming connections are reported, not blocked")
    return found


def _exception_holes(rule: Rule, alert_type: str, now_ns: int, notes: list[str]) -> list[_Network]:
    holes: list[_Network] = []
    for index, exception in enumerate(rule.exceptions):
        if exception.expires_ns is not None and exception.expires_ns <= now_ns:
            continue
        if exception.destination:
            holes.extend(_networks([exception.destination]))
        else:
            notes.append(
                f"{alert_type}: exception {index} ({exception.reason}) names no destination; "
                "the block applies to every program of the node"
            )
    return holes


def _subtract(blocked: list[_Network], holes: list[_Network]) -> list[_Network]:
    """``blocked`` merged, without any address of ``holes``: IPv4 networks first, then IPv6."""
    v4 = _family(ipaddress.IPv4Network, blocked, holes)
    v6 = _family(ipaddress.IPv6Network, blocked, holes)
    return [*v4, *v6]


_N = TypeVar("_N", ipaddress.IPv4Network, ipaddress.IPv6Network)


def _family(kind: type[_N], blocked: list[_Network], holes: list[_Network]) -> list[_N]:
    remaining = list(ipaddress.collapse_addresses(n for n in blocked if isinstance(n, kind)))
    for hole in ipaddress.collapse_addresses(h for h in holes if isinstance(h, kind)):
        pieces: list[_N] = []
        for network in remaining:
            if not network.overlaps(hole):
                pieces.append(network)
            elif not hole.supernet_of(network):
                pieces.extend(network.address_exclude(hole))
        remaining = pieces
    return list(ipaddress.collapse_addresses(remaining))
