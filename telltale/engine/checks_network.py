"""Checks of the network category (see :mod:`telltale.engine.catalog_network`).

Socket events but SOCKET reach these checks as :class:`~telltale.engine.facts.SocketFacts`; the
checks test the cheap facts first and read the rest of the event only when they are about to
fire.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

from telltale.engine.checkbase import (
    SOCK_DGRAM,
    SOCK_RAW,
    SOCK_TYPE_MASK,
    WILDCARDS,
    Check,
    Context,
    Hit,
    check,
    connect_failed,
    failed,
    flag,
    integer,
    ints,
    strings,
    transport,
)
from telltale.engine.facts import SocketFacts, is_inet, sock_type
from telltale.engine.linux import AF_INET, AF_INET6, AF_PACKET
from telltale.engine.netranges import AddressRanges, is_public
from telltale.engine.params import ParamValue
from telltale.v1 import common_pb2

_BIND = common_pb2.EVENT_KIND_BIND
_SEND = common_pb2.EVENT_KIND_SEND
_ACCEPT = common_pb2.EVENT_KIND_ACCEPT
_VERBS: dict[int, str] = {_SEND: "sends to", _ACCEPT: "accepted a connection from"}


def _verb(kind: int) -> str:
    return _VERBS.get(kind, "connects to")


@check("network.listen_all_interfaces")
def _listen_all_interfaces(params: Mapping[str, ParamValue], context: Context) -> Check:
    ignored = frozenset(ints(params, "ignore_ports"))

    def match(f: SocketFacts) -> Hit | None:
        if f.address not in WILDCARDS or f.port in ignored:
            return None
        kind = sock_type(f.event)
        if f.kind == _BIND and kind != SOCK_DGRAM:
            return None  # a bound stream socket is only exposed once it listens
        if failed(f.event):
            return None
        subject = f"{transport(kind)}/{f.port}"
        return Hit(subject, f"listens on all interfaces ({subject})")

    return match


@check("network.privileged_port")
def _privileged_port(params: Mapping[str, ParamValue], context: Context) -> Check | None:
    max_port = integer(params, "max_port")
    if max_port < 1:
        return None

    def match(f: SocketFacts) -> Hit | None:
        port = f.port
        if not 0 < port <= max_port or not is_inet(f.event) or failed(f.event):
            return None
        return Hit(str(port), f"listens on privileged port {port}")

    return match


@check("network.blocklisted_destination")
def _blocklisted_destination(params: Mapping[str, ParamValue], context: Context) -> Check | None:
    blocked = AddressRanges(strings(params, "networks"))
    if not blocked:
        return None
    contains = blocked.membership()

    def match(f: SocketFacts) -> Hit | None:
        text = f.address
        if not contains(text) or not is_inet(f.event):
            return None
        return Hit(text, f"{_verb(f.kind)} blocklisted address {text}", destination=text)

    return match


@check("network.restricted_country")
def _restricted_country(params: Mapping[str, ParamValue], context: Context) -> Check | None:
    restricted = frozenset(strings(params, "countries"))
    if not restricted:
        return None
    incoming = flag(params, "incoming")
    country = lru_cache(maxsize=65536)(context.countries.country)

    def match(f: SocketFacts) -> Hit | None:
        if f.kind == _ACCEPT and not incoming:
            return None
        text = f.address
        code = country(text)
        if code is None or code not in restricted or not is_inet(f.event):
            return None
        return Hit(code, f"{_verb(f.kind)} {text} in restricted country {code}", destination=text)

    return match


@check("network.cloud_metadata")
def _cloud_metadata(params: Mapping[str, ParamValue], context: Context) -> Check | None:
    networks = AddressRanges(strings(params, "networks"))
    names = frozenset(name.lower().rstrip(".") for name in strings(params, "hostnames"))
    if not networks and not names:
        return None
    contains = networks.membership()

    def match(f: SocketFacts | common_pb2.Event) -> Hit | None:
        if not isinstance(f, SocketFacts):  # a RESOLVE event
            name = f.resolve.name.lower().rstrip(".")
            if name not in names:
                return None
            return Hit(name, f"resolved the metadata service name {name}")
        text = f.address
        if not contains(text) or not is_inet(f.event):
            return None
        return Hit(text, f"{_verb(f.kind)} the cloud metadata service at {text}", destination=text)

    return match


@check("network.plaintext_protocol")
def _plaintext_protocol(params: Mapping[str, ParamValue], context: Context) -> Check | None:
    ports = frozenset(ints(params, "ports"))
    if not ports:
        return None
    include_internal = flag(params, "include_internal")

    def match(f: SocketFacts) -> Hit | None:
        port = f.port
        if port not in ports:
            return None
        text = f.address
        event = f.event
        if (not include_internal and not is_public(text)) or not is_inet(event) or connect_failed(event):
            return None
        subject = f"{transport(sock_type(event))}/{port}"
        return Hit(subject, f"{_verb(f.kind)} {text} over a plaintext protocol ({subject})", destination=text)

    return match


@check("network.unexpected_udp")
def _unexpected_udp(params: Mapping[str, ParamValue], context: Context) -> Check:
    allowed = AddressRanges(strings(params, "allowed_networks")).membership()
    allowed_ports = frozenset(ints(params, "allowed_ports"))

    def match(f: SocketFacts) -> Hit | None:
        if f.port in allowed_ports:
            return None
        text = f.address
        event = f.event
        if sock_type(event) != SOCK_DGRAM or allowed(text) or not is_inet(event) or connect_failed(event):
            return None
        return Hit(text, f"sends UDP to unexpected destination {text} port {f.port}", destination=text)

    return match


@check("network.raw_socket")
def _raw_socket(params: Mapping[str, ParamValue], context: Context) -> Check:
    ignored = frozenset(ints(params, "ignore_protocols"))

    def match(event: common_pb2.Event) -> Hit | None:
        socket = event.socket
        domain = socket.domain
        if domain == AF_PACKET:
            subject = "packet"
        elif domain in (AF_INET, AF_INET6) and socket.type & SOCK_TYPE_MASK == SOCK_RAW:
            if socket.protocol in ignored:
                return None
            subject = f"raw {'inet6' if domain == AF_INET6 else 'inet'} protocol {socket.protocol}"
        else:
            return None
        if failed(event):
            return None
        return Hit(subject, f"opened a {subject} socket")

    return match
