"""The country of an address, as the engine asks for it.

Evaluation only needs "which country is this address in?". The answer comes from a
:class:`CountryLookup` handed to :meth:`telltale.engine.evaluate.CompiledPolicy.compile` (or to
:class:`telltale.engine.evaluate.PolicySet`); the implementations that read a database or an
override file live in :mod:`telltale.engine.geo`, so that this module, and evaluation, stay free
of I/O.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["NO_COUNTRIES", "CountryLookup", "NoCountries"]


@runtime_checkable
class CountryLookup(Protocol):
    """Maps an IP address (text, as events carry it) to an ISO 3166-1 alpha-2 code.

    Implementations must answer from memory (no I/O per call), return upper-case codes, and
    return None for an address they cannot place, including anything that is not an address.
    """

    def country(self, address: str) -> str | None:
        """The country code of ``address``, or None."""
        ...


class NoCountries:
    """A lookup that knows no country: every address maps to None."""

    __slots__ = ()

    def country(self, address: str) -> str | None:
        """Always None."""
        del address
        return None

    def __repr__(self) -> str:
        return "NoCountries()"


NO_COUNTRIES: CountryLookup = NoCountries()
"""The default lookup: restricted-country rules never fire with it."""
