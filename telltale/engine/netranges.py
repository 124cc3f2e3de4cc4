"""Fast membership of IP addresses in a fixed set of networks.

Networks are merged into sorted, disjoint integer ranges per address family and searched with
bisect, so a lookup costs one parse (cached) and one binary search whatever the number of
networks. IPv4-mapped IPv6 addresses (``::ffff:192.0.2.1``) count as their IPv4 address.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_right
from collections.abc import Callable, Iterable
from functools import lru_cache


@lru_cache(maxsize=16384)
def parse_address(text: str) -> tuple[int, int] | None:
    """Return (IP version, address as an integer) for ``text``, or None if it is not an address."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return 4, int(address.ipv4_mapped)
    return address.version, int(address)


@lru_cache(maxsize=16384)
def is_public(text: str) -> bool:
    """True when ``text`` is a globally routable unicast address.

    False for private, shared (100.64.0.0/10), loopback, link-local, multicast, documentation
    and other reserved ranges, and for anything that is not an address. IPv4-mapped IPv6
    addresses are judged as their IPv4 address.
    """
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


class AddressRanges:
    """An immutable set of networks that answers "is this address inside one of them?"."""

    __slots__ = ("_ends", "_starts")

    def __init__(self, networks: Iterable[str]) -> None:
        """Build from CIDR strings or single addresses; raises ValueError on an invalid one."""
        spans: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        for text in networks:
            network = ipaddress.ip_network(text, strict=False)
            first = int(network.network_address)
            spans[network.version].append((first, first + network.num_addresses - 1))
        self._starts: dict[int, list[int]] = {}
        self._ends: dict[int, list[int]] = {}
        for version, items in spans.items():
            starts: list[int] = []
            ends: list[int] = []
            for start, end in sorted(items):
                if ends and start <= ends[-1] + 1:
                    ends[-1] = max(ends[-1], end)
                else:
                    starts.append(start)
                    ends.append(end)
            self._starts[version] = starts
            self._ends[version] = ends

    def __bool__(self) -> bool:
        return any(self._starts.values())

    def __contains__(self, text: object) -> bool:
        return isinstance(text, str) and self.contains(text)

    def membership(self, cache: int = 65536) -> Callable[[str], bool]:
        """:meth:`contains` remembering its latest ``cache`` answers, for hot paths where the
        same addresses come back."""
        return lru_cache(maxsize=cache)(self.contains)

    def contains(self, text: str) -> bool:
        """True when the address ``text`` is inside one of the networks; False for a non-address."""
        parsed = parse_address(text)
        if parsed is None:
            return False
        version, value = parsed
        starts = self._starts[version]
        index = bisect_right(starts, value) - 1
        return index >= 0 and value <= self._ends[version][index]
