"""Network alert types: what fires each, what does not, its parameters and its exceptions."""

from __future__ import annotations

import pytest
from casetable import Case, fires, quiet, uncovered
from eventkit import (
    AF_INET,
    AF_INET6,
    AF_NETLINK,
    AF_PACKET,
    NOW,
    OTHER,
    SHOP_API,
    SOCK_DGRAM,
    SOCK_NONBLOCK,
    SOCK_RAW,
    SOCK_STREAM,
    Countries,
    K,
    compiled,
    connect,
    fired,
    resolve,
    send,
    socket_created,
    socket_event,
)

from telltale.engine.evaluate import CompiledPolicy
from telltale.v1 import common_pb2, policy_pb2

LISTEN, BIND, ACCEPT = K.EVENT_KIND_LISTEN, K.EVENT_KIND_BIND, K.EVENT_KIND_ACCEPT
ALL_IFS = "network.listen_all_interfaces"
PRIVILEGED = "network.privileged_port"
BLOCKLIST = "network.blocklisted_destination"
COUNTRY = "network.restricted_country"
METADATA = "network.cloud_metadata"
PLAINTEXT = "network.plaintext_protocol"
UDP = "network.unexpected_udp"
RAW = "network.raw_socket"

CASES = [
    fires("wildcard listen", ALL_IFS, socket_event(LISTEN, "0.0.0.0", 8080), "tcp/8080"),
    quiet("loopback listen", ALL_IFS, socket_event(LISTEN, "127.0.0.1", 8080)),
    quiet("ignored port", ALL_IFS, socket_event(LISTEN, "0.0.0.0", 8080), params="{ignore_ports: [8080]}"),
    fires("port 443", PRIVILEGED, socket_event(LISTEN, "127.0.0.1", 443), "443"),
    quiet("port 8443", PRIVILEGED, socket_event(LISTEN, "127.0.0.1", 8443)),
    fires(
        "raised max_port", PRIVILEGED, socket_event(LISTEN, "::1", 8443), "8443", params="{max_port: 9000}"
    ),
    fires(
        "listed network",
        BLOCKLIST,
        connect("203.0.113.9"),
        "203.0.113.9",
        params="{networks: [203.0.113.0/24]}",
    ),
    fires(
        "datagram", BLOCKLIST, send("203.0.113.9", 53), "203.0.113.9", params="{networks: [203.0.113.0/24]}"
    ),
    quiet("outside", BLOCKLIST, connect("203.0.114.9"), params="{networks: [203.0.113.0/24]}"),
    quiet("empty blocklist", BLOCKLIST, connect("203.0.113.9")),
    fires("IPv4 metadata", METADATA, connect("169.254.169.254", 80), "169.254.169.254"),
    fires("IPv6 metadata", METADATA, connect("fd00:ec2::254", 80), "fd00:ec2::254"),
    fires("mapped metadata", METADATA, connect("::ffff:169.254.169.254", 80), "::ffff:169.254.169.254"),
    fires("ECS task metadata", METADATA, connect("169.254.170.2", 80), "169.254.170.2"),
    fires("datagram", METADATA, send("169.254.169.254", 80), "169.254.169.254"),
    fires("name", METADATA, resolve("Metadata.Google.Internal."), "metadata.google.internal"),
    quiet("other link-local", METADATA, connect("169.254.169.253", 80)),
    quiet("other name", METADATA, resolve("example.com", "93.184.216.34")),
    quiet("names only", METADATA, connect("169.254.169.254", 80), params="{networks: []}"),
    fires("telnet to public", PLAINTEXT, connect("8.8.8.8", 23), "tcp/23"),
    fires("http to public v6", PLAINTEXT, connect("2001:4860:4860::8888", 80), "tcp/80"),
    fires("tftp datagram", PLAINTEXT, send("8.8.8.8", 69), "udp/69"),
    fires("in progress", PLAINTEXT, connect("8.8.8.8", 80, errno=115), "tcp/80"),
    quiet("https", PLAINTEXT, connect("8.8.8.8", 443)),
    quiet("internal http", PLAINTEXT, connect("10.1.2.3", 80)),
    quiet("refused", PLAINTEXT, connect("8.8.8.8", 80, errno=111)),
    fires(
        "internal included", PLAINTEXT, connect("10.1.2.3", 80), "tcp/80", params="{include_internal: true}"
    ),
    quiet("port not listed", PLAINTEXT, connect("8.8.8.8", 80), params="{ports: [21]}"),
    fires("public datagram", UDP, send("8.8.8.8", 9999), "8.8.8.8"),
    fires("connected UDP", UDP, connect("10.9.9.9", 514, sock_type=SOCK_DGRAM | SOCK_NONBLOCK), "10.9.9.9"),
    quiet("DNS", UDP, send("8.8.8.8", 53)),
    quiet("loopback", UDP, send("127.0.0.1", 8125)),
    quiet("TCP connect", UDP, connect("8.8.8.8", 9999, sock_type=SOCK_STREAM)),
    quiet("allowed network", UDP, send("10.0.0.7", 8125), params="{allowed_networks: [10.0.0.0/8]}"),
    fires("no allowed ports", UDP, send("8.8.8.8", 53), "8.8.8.8", params="{allowed_ports: []}"),
    fires("packet socket", RAW, socket_created(AF_PACKET, SOCK_RAW, 768), "packet"),
    fires("raw ICMP", RAW, socket_created(AF_INET, SOCK_RAW, 1), "raw inet protocol 1"),
    fires("raw IPv6", RAW, socket_created(AF_INET6, SOCK_RAW | SOCK_NONBLOCK, 58), "raw inet6 protocol 58"),
    quiet("netlink", RAW, socket_created(AF_NETLINK, SOCK_RAW, 0)),
    quiet("stream", RAW, socket_created(AF_INET, SOCK_STREAM, 6)),
    quiet("ping socket", RAW, socket_created(AF_INET, SOCK_DGRAM, 1)),
    quiet("refused", RAW, socket_created(AF_INET, SOCK_RAW, 1, errno=1)),
    quiet("ignored protocol", RAW, socket_created(AF_INET, SOCK_RAW, 1), params="{ignore_protocols: [1]}"),
]


@pytest.mark.parametrize("case", CASES)
def test_network_case(case: Case) -> None:
    """Each network case fires with exactly its expected subjects, or stays quiet."""
    assert case.run() == list(case.expected)


def test_every_network_type_has_a_firing_and_a_quiet_case() -> None:
    """The table covers every network alert type both ways."""
    cases = [*CASES, *COUNTRY_CASES]
    assert uncovered(cases, common_pb2.CATEGORY_NETWORK) == []


# network.restricted_country: the lookup decides.

LOOKUP = Countries({"5.6.7.8": "KP", "2a00::1": "IR", "1.2.3.4": "US", "10.0.0.66": "KP"})


def country_policy(params: str = "{countries: [KP, IR]}") -> CompiledPolicy:
    return compiled(f"{COUNTRY}: {{params: {params}}}\n", countries=LOOKUP)


COUNTRY_CASES = [
    pytest.param(Case("restricted", COUNTRY, connect("5.6.7.8"), ("KP",)), id="restricted"),
    pytest.param(Case("restricted v6 datagram", COUNTRY, send("2a00::1", 443), ("IR",)), id="v6-datagram"),
    pytest.param(Case("allowed country", COUNTRY, connect("1.2.3.4"), ()), id="allowed-country"),
    pytest.param(Case("unknown", COUNTRY, connect("9.9.9.9"), ()), id="unknown"),
    pytest.param(Case("incoming", COUNTRY, socket_event(ACCEPT, "5.6.7.8", 40000), ()), id="incoming-off"),
    pytest.param(
        Case("unix", COUNTRY, socket_event(K.EVENT_KIND_CONNECT, "/run/x", 0, family="unix"), ()), id="unix"
    ),
]


@pytest.mark.parametrize("case", COUNTRY_CASES)
def test_restricted_country(case: Case) -> None:
    """Destinations the lookup places in a listed country fire; others, and incoming, do not."""
    assert fired(country_policy(), case.event) == list(case.expected)


def test_restricted_country_incoming_and_summary() -> None:
    """With incoming, accepted connections from a listed country fire too; the summary names both."""
    policy = compiled(f"{COUNTRY}: {{params: {{countries: [KP], incoming: true}}}}\n", countries=LOOKUP)
    (finding,) = policy.evaluate(socket_event(ACCEPT, "5.6.7.8", 40000), SHOP_API, NOW)
    assert finding.summary == "shop/api accepted a connection from 5.6.7.8 in restricted country KP"
    assert finding.priority == common_pb2.PRIORITY_P1


def test_restricted_country_parameters_change_the_outcome() -> None:
    """Changing the list changes which destinations fire; an empty list never fires."""
    assert fired(country_policy("{countries: [US]}"), connect("1.2.3.4")) == ["US"]
    assert fired(country_policy("{countries: [US]}"), connect("5.6.7.8")) == []
    assert country_policy("{countries: []}").active_types == frozenset()


def test_restricted_country_without_a_lookup_never_fires() -> None:
    """The default lookup knows no country, so the rule cannot fire."""
    assert fired(compiled(f"{COUNTRY}: {{params: {{countries: [KP]}}}}\n"), connect("5.6.7.8")) == []


def test_restricted_country_asks_once_per_address() -> None:
    """The lookup is asked once per distinct address (answers are kept for the compiled policy)."""
    lookup = Countries({"5.6.7.8": "KP"})
    policy = compiled(f"{COUNTRY}: {{params: {{countries: [KP]}}}}\n", countries=lookup)
    for _ in range(3):
        assert fired(policy, connect("5.6.7.8")) == ["KP"]
    assert lookup.asked == ["5.6.7.8"]


def test_restricted_country_exception_by_destination_and_block_action() -> None:
    """A destination exception silences that network; a block rule's finding carries the action."""
    policy = compiled(
        f"""
        {COUNTRY}:
          action: block
          params: {{countries: [KP]}}
          exceptions:
            - {{destination: 5.6.7.0/24, reason: partner}}
        """,
        countries=LOOKUP,
    )
    assert fired(policy, connect("5.6.7.8")) == []
    (finding,) = policy.evaluate(connect("10.0.0.66"), SHOP_API, NOW)
    assert finding.action == policy_pb2.RULE_ACTION_BLOCK


def test_cloud_metadata_exception_by_application() -> None:
    """An application whose SDK reads instance credentials can be excepted; others still fire."""
    policy = compiled(
        f"""
        {METADATA}:
          exceptions:
            - {{application: shop, destination: 169.254.169.254, reason: instance role credentials}}
        """
    )
    assert fired(policy, connect("169.254.169.254", 80)) == []
    assert fired(policy, connect("169.254.169.254", 80), OTHER) == ["169.254.169.254"]


def test_plaintext_summary_names_destination_and_port() -> None:
    """The summary says where the plaintext traffic went."""
    (finding,) = compiled(f"{PLAINTEXT}: {{}}\n").evaluate(connect("8.8.8.8", 21), SHOP_API, NOW)
    assert finding.summary == "shop/api connects to 8.8.8.8 over a plaintext protocol (tcp/21)"
