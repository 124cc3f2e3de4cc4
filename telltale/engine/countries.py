"""The country of an address, as the engine asks for it.

Evaluation only needs "which country is this address in?". The answer comes from a
:class:`CountryLookup` handed to :meth:`telltale.engine.evaluate.CompiledPolicy.compile` (or to
:class:`telltale.engine.evaluate.PolicySet`); the implementations that read a database or an
override file live in :mod:`telltale.engine.geo`, so that this module, and evaluation, stay free
of I/O.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["NO_COUNTRIES", "CountryLookup", "CountryNetworks", "NoCountries"]


@runtime_checkable
class CountryLookup(Protocol):
    """Maps an IP address (text, as events carry it) to an ISO 3166-1 alpha-2 code.

    Implementations must answer from memory (no I/O per call), return upper-case codes, and
    return None for an address they cannot place, including anything that is not an address.
    """

    def country(self, address: str) -> str | None:
        """The country code of ``address``, or None."""
        ...


@runtime_checkable
class CountryNetworks(Protocol):
    """A lookup that can also list the networks of a country, so that agents can block them.

    Implementations may do work on the first call for a country (reading a database through) and
    must answer later calls from memory.
    """

    def networks(self, code: str) -> tuple[tuple[str, ...], bool]:
        """The networks (CIDR notation) placed in country ``code``, and whether that list is
        complete (False when some of the data answers single addresses only and cannot be listed)."""
        ...


class NoCountries:
    """A lookup that knows no country: every address maps to None."""

    __slots__ = ()

    def country(self, address: str) -> str | None:
        """Always None."""
        del address
        return None

    def networks(self, code: str) -> tuple[tuple[str, ...], bool]:
        """Nothing, and complete: this lookup places no address anywhere."""
        del code
        return (), True

    def __repr__(self) -> str:
        return "NoCountries()"


NO_COUNTRIES: CountryLookup = NoCountries()
"""The default lookup: restricted-country rules never fire with it."""
