"""Country lookups the controller hands to the engine (see :mod:`telltale.engine.countries`).

- :class:`OfflineCountries` answers from the data the ``iptocc`` package ships: no download,
  no configuration.
- :class:`MaxMindCountries` answers from a MaxMind-format (``.mmdb``) country or city database.
- :class:`OverrideCountries` maps listed networks to countries and asks another lookup for
  everything else; it is meant for tests and demos (map a loopback range to a country code).

:func:`country_lookup` builds the usual combination from configuration.

Private, shared, loopback, link-local, multicast and reserved addresses never map to a country
in the database-backed lookups: :func:`public_address` is the one place that decides. An
override file is explicit operator intent and wins over that rule: a network it lists maps to
its country even when the network is private (that is how a demo places 127.0.0.66 in a
restricted country).

Construction does the I/O (opening a database, reading a file) and raises there; lookups then
answer from memory and never raise.
"""

from __future__ import annotations

import csv
import io
import ipaddress
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import iptocc
import maxminddb
import yaml

from telltale.engine.countries import NO_COUNTRIES, CountryLookup, CountryNetworks
from telltale.engine.params import country_code

__all__ = [
    "MaxMindCountries",
    "OfflineCountries",
    "OverrideCountries",
    "country_lookup",
    "public_address",
]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _parse(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.scope_id is not None:
            return ipaddress.IPv6Address(text.partition("%")[0])
    return address


@lru_cache(maxsize=65536)
def public_address(text: str) -> str | None:
    """``text`` in canonical form if it is a globally routable unicast address, else None.

    IPv4-mapped IPv6 addresses give their IPv4 form. None for private, shared (100.64.0.0/10),
    loopback, link-local, multicast, documentation and other reserved ranges, and for text that
    is not an address.
    """
    address = _parse(text)
    if address is None or not address.is_global or address.is_multicast:
        return None
    return str(address)


class OfflineCountries:
    """Countries from the offline data of the ``iptocc`` package (nothing to configure)."""

    __slots__ = ("_lookup",)

    def __init__(self) -> None:
        self._lookup = iptocc.country_code

    def country(self, address: str) -> str | None:
        """The country code of a public ``address``; None for others and unknown ones."""
        public = public_address(address)
        if public is None:
            return None
        code = self._lookup(public)
        return code.upper() if code else None

    def networks(self, code: str) -> tuple[tuple[str, ...], bool]:
        """Nothing, incomplete: the offline data answers single addresses and cannot be listed."""
        del code
        return (), False

    def __repr__(self) -> str:
        return "OfflineCountries()"


def _iso_code(record: object) -> str | None:
    if not isinstance(record, dict):
        return None
    for key in ("country", "registered_country"):
        value = record.get(key)
        if isinstance(value, dict) and isinstance(value.get("iso_code"), str):
            return str(value["iso_code"]).upper()
        if isinstance(value, str) and len(value) == 2:  # databases that store the code itself
            return value.upper()
    return None


class MaxMindCountries:
    """Countries from a MaxMind-format database (GeoLite2/GeoIP2 Country or City, DB-IP, ...).

    The database is opened (and memory-mapped where possible) at construction: raises OSError
    when the file cannot be read and ``maxminddb.InvalidDatabaseError`` (a RuntimeError) when
    it is not a MaxMind database. Call :meth:`close` (or use ``with``) to release it.
    """

    __slots__ = ("_by_country", "_reader", "path")

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._reader = maxminddb.open_database(str(self.path))
        self._by_country: dict[str, tuple[str, ...]] | None = None

    def country(self, address: str) -> str | None:
        """The country code of a public ``address``; None for others and unknown ones."""
        public = public_address(address)
        if public is None:
            return None
        try:
            record: Any = self._reader.get(public)
        except ValueError:  # an IPv6 address asked of an IPv4-only database
            return None
        return _iso_code(record)

    def networks(self, code: str) -> tuple[tuple[str, ...], bool]:
        """Every public network the database places in ``code``, merged; complete.

        The first call reads the whole database through once (seconds for a full country
        database) and keeps the networks of every country; later calls answer from memory.
        """
        if self._by_country is None:
            found: dict[str, list[_Network]] = {}
            for network, record in self._reader:
                country = _iso_code(record)
                if country is not None and network.is_global:
                    found.setdefault(country, []).append(network)
            self._by_country = {
                country: tuple(str(n) for n in _collapse(networks)) for country, networks in found.items()
            }
        return self._by_country.get(code.upper(), ()), True

    def close(self) -> None:
        """Release the database."""
        self._reader.close()

    def __enter__(self) -> MaxMindCountries:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MaxMindCountries({str(self.path)!r})"


class OverrideCountries:
    """Listed networks map to listed countries; other addresses go to ``fallback``.

    ``mapping`` maps networks in CIDR notation (or single addresses) to ISO 3166-1 alpha-2
    codes. The most specific listed network containing an address wins. Listed networks may be
    private or loopback: an override is explicit intent and is not filtered. Raises ValueError
    naming the first invalid network or code.
    """

    __slots__ = ("_fallback", "_networks")

    def __init__(self, mapping: Mapping[str, str], fallback: CountryLookup = NO_COUNTRIES) -> None:
        networks: list[tuple[_Network, str]] = []
        for text, raw_code in mapping.items():
            try:
                network = ipaddress.ip_network(str(text).strip(), strict=True)
            except ValueError as exc:
                raise ValueError(f"{text!r} is not a CIDR or address: {exc}") from None
            code = str(raw_code).strip().upper()
            if (problem := country_code(code)) is not None:
                raise ValueError(f"{text}: {problem}")
            networks.append((network, code))
        networks.sort(key=lambda item: item[0].prefixlen, reverse=True)
        self._networks = tuple(networks)
        self._fallback = fallback

    @classmethod
    def from_file(cls, path: str | Path, fallback: CountryLookup = NO_COUNTRIES) -> OverrideCountries:
        """Read an override file: CSV (``.csv``: lines of ``network,country``, ``#`` comments and
        an optional ``network,country`` header) or YAML (any other name: a mapping of network
        to country). Raises OSError when it cannot be read and ValueError, naming the file and
        the line or entry, when it is invalid."""
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        try:
            mapping = _read_csv(text) if path.suffix.lower() == ".csv" else _read_yaml(text)
            return cls(mapping, fallback)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

    def country(self, address: str) -> str | None:
        """The country of the most specific listed network holding ``address``, else the
        fallback's answer."""
        parsed = _parse(address)
        if parsed is None:
            return None
        for network, code in self._networks:
            if parsed.version == network.version and parsed in network:
                return code
        return self._fallback.country(address)

    def networks(self, code: str) -> tuple[tuple[str, ...], bool]:
        """The listed networks of ``code`` with the fallback's; complete when the fallback's are."""
        code = code.upper()
        listed = [network for network, listed_code in self._networks if listed_code == code]
        more, complete = (
            self._fallback.networks(code) if isinstance(self._fallback, CountryNetworks) else ((), False)
        )
        merged = _collapse([*listed, *(ipaddress.ip_network(n) for n in more)])
        return tuple(str(n) for n in merged), complete

    def __repr__(self) -> str:
        return f"OverrideCountries({len(self._networks)} networks, fallback={self._fallback!r})"


def _collapse(networks: list[_Network]) -> list[_Network]:
    """``networks`` merged where they touch or overlap: IPv4 first, then IPv6."""
    v4 = [n for n in networks if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in networks if isinstance(n, ipaddress.IPv6Network)]
    return [*ipaddress.collapse_addresses(v4), *ipaddress.collapse_addresses(v6)]


def _read_csv(text: str) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        cells = [cell.strip() for cell in row]
        if not cells or not any(cells) or cells[0].startswith("#"):
            continue
        if number == 1 and [c.lower() for c in cells] == ["network", "country"]:
            continue
        if len(cells) != 2:
            raise ValueError(f"line {number}: expected 'network,country', got {','.join(cells)!r}")
        if cells[0] in mapping:
            raise ValueError(f"line {number}: {cells[0]!r} is listed twice")
        mapping[cells[0]] = cells[1]
    return mapping


def _read_yaml(text: str) -> dict[str, str]:
    try:
        data = yaml.load(text, Loader=yaml.BaseLoader)  # every scalar as text: NO stays Norway
    except yaml.YAMLError as exc:
        raise ValueError(f"not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError("expected a mapping of network to country code")
    mapping: dict[str, str] = {}
    for key, value in data.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"entry {key!r}: expected text: network and country code")
        mapping[key] = value
    return mapping


def country_lookup(
    *, maxmind_path: str | Path | None = None, override_path: str | Path | None = None
) -> CountryLookup:
    """The lookup the configuration asks for: a MaxMind database when ``maxmind_path`` is
    given, otherwise the offline data; with ``override_path``, that file's networks first.

    Raises what the constructors raise (OSError, ValueError, ``maxminddb.InvalidDatabaseError``).
    """
    base: CountryLookup = MaxMindCountries(maxmind_path) if maxmind_path else OfflineCountries()
    if override_path:
        return OverrideCountries.from_file(override_path, fallback=base)
    return base
