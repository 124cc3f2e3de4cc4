"""A minimal MaxMind DB (format 2.0) writer for tests: IPv6 tree, 24-bit records, country data.

Enough to make a small country database on the fly, so that the MaxMind lookup is tested
against a real file read by the real reader.
"""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

_METADATA_MARKER = b"\xab\xcd\xefMaxMind.com"


def _size(kind: int, size: int) -> bytes:
    assert size < 29
    if kind <= 7:
        return bytes([(kind << 5) | size])
    return bytes([size, kind - 7])  # extended type


def _uint(kind: int, value: int) -> bytes:
    payload = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return _size(kind, len(payload)) + payload


def _encode(value: object) -> bytes:
    if isinstance(value, str):
        raw = value.encode("utf-8")
        return _size(2, len(raw)) + raw
    if isinstance(value, dict):
        return _size(7, len(value)) + b"".join(_encode(k) + _encode(v) for k, v in value.items())
    if isinstance(value, list):
        return _size(11, len(value)) + b"".join(_encode(v) for v in value)
    if isinstance(value, tuple):  # (kind, int): uint16 = 5, uint32 = 6, uint64 = 9
        kind, number = value
        return _uint(kind, number)
    raise TypeError(value)


def write_country_db(path: Path, networks: dict[str, str]) -> Path:
    """Write a database mapping each network (CIDR) to ``{"country": {"iso_code": code}}``.

    IPv4 networks are stored where readers look for them in an IPv6 tree (``::a.b.c.d``).
    """
    nodes: list[list[object]] = [[None, None]]
    data = b""
    for text, code in networks.items():
        network = ipaddress.ip_network(text)
        bits = int(network.network_address)
        prefix = network.prefixlen + (96 if network.version == 4 else 0)
        offset = len(data)
        data += _encode({"country": {"iso_code": code}})
        node = 0
        for depth in range(prefix):
            bit = (bits >> (127 - depth)) & 1  # an IPv4 address is ::a.b.c.d: 96 zero bits first
            if depth == prefix - 1:
                nodes[node][bit] = ("data", offset)
                break
            child = nodes[node][bit]
            if not isinstance(child, int):
                nodes.append([None, None])
                child = nodes[node][bit] = len(nodes) - 1
            node = child
    count = len(nodes)

    def record(entry: object) -> int:
        if entry is None:
            return count
        if isinstance(entry, int):
            return entry
        assert isinstance(entry, tuple)
        return count + 16 + entry[1]

    tree = b"".join(
        struct.pack(">I", record(left))[1:] + struct.pack(">I", record(right))[1:] for left, right in nodes
    )
    metadata = _encode(
        {
            "binary_format_major_version": (5, 2),
            "binary_format_minor_version": (5, 0),
            "build_epoch": (9, 1_700_000_000),
            "database_type": "Telltale-Test-Country",
            "description": {"en": "test data"},
            "ip_version": (5, 6),
            "languages": ["en"],
            "node_count": (6, count),
            "record_size": (5, 24),
        }
    )
    path.write_bytes(tree + b"\x00" * 16 + data + _METADATA_MARKER + metadata)
    return path
