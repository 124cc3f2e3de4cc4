"""Catalog entries of the network category: where workloads connect and how they listen."""

from __future__ import annotations

from telltale.engine.alerttype import AlertTypeSpec
from telltale.engine.params import ParamSpec, cidr, country_code, hostname, non_negative, port
from telltale.v1 import common_pb2 as c

_OUTGOING = frozenset({c.EVENT_KIND_CONNECT, c.EVENT_KIND_SEND})
_DESTINATION = frozenset({"destination"})

SPECS: tuple[AlertTypeSpec, ...] = (
    AlertTypeSpec(
        id="network.listen_all_interfaces",
        category=c.CATEGORY_NETWORK,
        title="Listening on all interfaces",
        description="A workload listens for TCP connections, or binds a UDP socket, on the wildcard "
        "address (0.0.0.0 or ::), so it is reachable from every network the host is attached to. "
        "Calls that failed are ignored.",
        rationale="A service bound to every interface is exposed on networks it was never meant to "
        "serve, such as a management or public network.",
        remediation="Bind the service to the address of the interface it serves (or to loopback when "
        "only local clients use it), or list the port in ignore_ports if exposure is intended.",
        params=(
            ParamSpec(
                "ignore_ports", "ints", "Ports on which listening on all interfaces is expected.", (), port
            ),
        ),
        default_priority=c.PRIORITY_P3,
        blockable=False,
        event_kinds=frozenset({c.EVENT_KIND_LISTEN, c.EVENT_KIND_BIND}),
    ),
    AlertTypeSpec(
        id="network.privileged_port",
        category=c.CATEGORY_NETWORK,
        title="Listening on a privileged port",
        description="A workload listens on a port at or below max_port, on any address. Port 0 (a "
        "port chosen by the kernel) and calls that failed are ignored.",
        rationale="Binding a privileged port needs root or CAP_NET_BIND_SERVICE; a workload doing it "
        "runs with more privilege than most services need.",
        remediation="Listen on an unprivileged port and forward to it, or grant only "
        "CAP_NET_BIND_SERVICE instead of running as root.",
        params=(ParamSpec("max_port", "int", "The highest port considered privileged.", 1023, port),),
        default_priority=c.PRIORITY_P4,
        blockable=False,
        event_kinds=frozenset({c.EVENT_KIND_LISTEN}),
    ),
    AlertTypeSpec(
        id="network.blocklisted_destination",
        category=c.CATEGORY_NETWORK,
        title="Connection to a blocklisted destination",
        description="A workload attempted an IPv4 or IPv6 connection, or sent a datagram, to an "
        "address inside one of the configured networks, whether or not it succeeded.",
        rationale="Blocklisted networks are known-bad or forbidden destinations: command and control "
        "servers, networks the application must never reach.",
        remediation="Find why the workload contacts this destination; with action block, agents "
        "refuse such connections.",
        params=(
            ParamSpec(
                "networks",
                "strings",
                "Networks in CIDR notation (or single addresses) that must not be contacted.",
                (),
                cidr,
            ),
        ),
        default_priority=c.PRIORITY_P1,
        blockable=True,
        event_kinds=_OUTGOING,
        exception_scopes=_DESTINATION,
    ),
    AlertTypeSpec(
        id="network.restricted_country",
        category=c.CATEGORY_NETWORK,
        title="Connection to a restricted country",
        description="A workload attempted a connection, or sent a datagram, to an address located in "
        "one of the configured countries (with incoming, also accepted a connection from one). "
        "The country comes from the country database the controller is configured with; private, "
        "loopback, link-local and reserved addresses have no country.",
        rationale="Traffic with countries the organisation does not do business with, or that "
        "sanctions forbid, is either a compliance breach or a sign of data leaving for an "
        "attacker's infrastructure.",
        remediation="Find which code path contacts the destination; with action block, agents "
        "refuse such connections. Except a known partner by destination.",
        params=(
            ParamSpec(
                "countries",
                "strings",
                "ISO 3166-1 alpha-2 codes of the restricted countries, e.g. KP.",
                (),
                country_code,
            ),
            ParamSpec("incoming", "bool", "Also report accepted connections from those countries.", False),
        ),
        default_priority=c.PRIORITY_P1,
        blockable=True,
        event_kinds=frozenset({c.EVENT_KIND_CONNECT, c.EVENT_KIND_SEND, c.EVENT_KIND_ACCEPT}),
        exception_scopes=_DESTINATION,
    ),
    AlertTypeSpec(
        id="network.cloud_metadata",
        category=c.CATEGORY_NETWORK,
        title="Cloud metadata service contacted",
        description="A workload connected or sent a datagram to a cloud instance metadata address "
        "(169.254.169.254, fd00:ec2::254, ...), or resolved a metadata host name.",
        rationale="The metadata service hands out the instance's cloud credentials to anything "
        "that asks. Server-side request forgery aims at it, and a service that does not use the "
        "cloud API has no reason to call it.",
        remediation="Block it for workloads that do not need it (action block, or IMDSv2 with a hop "
        "limit of 1); except applications whose cloud SDK legitimately fetches credentials.",
        params=(
            ParamSpec(
                "networks",
                "strings",
                "Metadata service addresses (CIDR notation).",
                ("169.254.169.254/32", "fd00:ec2::254/128", "169.254.170.2/32", "100.100.100.200/32"),
                cidr,
            ),
            ParamSpec(
                "hostnames",
                "strings",
                "Host names of metadata services (compared without case).",
                ("metadata.google.internal",),
                hostname,
            ),
        ),
        default_priority=c.PRIORITY_P2,
        blockable=True,
        event_kinds=frozenset({*_OUTGOING, c.EVENT_KIND_RESOLVE}),
        exception_scopes=_DESTINATION,
    ),
    AlertTypeSpec(
        id="network.plaintext_protocol",
        category=c.CATEGORY_NETWORK,
        title="Plaintext protocol",
        description="A workload connected, or sent a datagram, to a port of a protocol that carries "
        "data and credentials in clear text (FTP, Telnet, HTTP, POP3, IMAP, LDAP, rsh, MQTT, "
        "...). Destinations in private, loopback and link-local ranges are ignored unless "
        "include_internal is set. Connections known to have failed are ignored.",
        rationale="Anything on the path can read and alter clear-text traffic, including passwords "
        "and session tokens.",
        remediation="Use the protocol's TLS variant (HTTPS, FTPS/SFTP, LDAPS, IMAPS, MQTT over TLS) "
        "or tunnel it.",
        params=(
            ParamSpec(
                "ports",
                "ints",
                "Destination ports of plaintext protocols.",
                (21, 23, 69, 80, 110, 143, 161, 389, 512, 513, 514, 1883),
                port,
            ),
            ParamSpec(
                "include_internal",
                "bool",
                "Also report destinations in private, loopback and link-local ranges.",
                False,
            ),
        ),
        default_priority=c.PRIORITY_P3,
        blockable=True,
        event_kinds=_OUTGOING,
        exception_scopes=_DESTINATION,
    ),
    AlertTypeSpec(
        id="network.unexpected_udp",
        category=c.CATEGORY_NETWORK,
        title="Unexpected UDP destination",
        description="A workload sent a UDP datagram (or connected a UDP socket) to a destination "
        "outside the allowed networks and ports.",
        rationale="Most services speak UDP only to DNS. Datagrams elsewhere are a common channel "
        "for exfiltration and command and control because they are rarely inspected.",
        remediation="Add the destination to allowed_networks or allowed_ports if it is part of the "
        "application (metrics, service discovery); otherwise find what sends it.",
        params=(
            ParamSpec(
                "allowed_networks",
                "strings",
                "Networks (CIDR notation) the workload may send UDP to on any port.",
                ("127.0.0.0/8", "::1/128"),
                cidr,
            ),
            ParamSpec("allowed_ports", "ints", "Destination ports allowed to any address.", (53,), port),
        ),
        default_priority=c.PRIORITY_P3,
        blockable=True,
        event_kinds=_OUTGOING,
        exception_scopes=_DESTINATION,
    ),
    AlertTypeSpec(
        id="network.raw_socket",
        category=c.CATEGORY_NETWORK,
        title="Raw or packet socket",
        description="A workload opened a raw IP socket (SOCK_RAW on AF_INET or AF_INET6) or a packet "
        "socket (AF_PACKET). Netlink sockets and failed calls are ignored.",
        rationale="Raw and packet sockets can sniff traffic and forge packets (spoofing, ARP "
        "poisoning, scanning). They need CAP_NET_RAW, which services rarely should have.",
        remediation="Remove CAP_NET_RAW from the workload; if it runs ping or a network tool on "
        "purpose, except that binary or list the protocol in ignore_protocols.",
        params=(
            ParamSpec(
                "ignore_protocols",
                "ints",
                "IP protocol numbers of raw sockets that are expected (1 is ICMP, 58 ICMPv6).",
                (),
                non_negative,
            ),
        ),
        default_priority=c.PRIORITY_P2,
        blockable=False,
        event_kinds=frozenset({c.EVENT_KIND_SOCKET}),
    ),
)
