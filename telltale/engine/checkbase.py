"""What every check shares: the hit it returns, the registries, and small matching helpers.

A check factory receives a rule's complete, validated parameters and the compile-time
:class:`Context`, and returns a check, or None when its parameters make the rule unable to fire
(an empty blocklist), so evaluation skips it altogether. The factory does all the preparation
(sets, ranges, compiled globs); the check runs once per event and must stay cheap.

There are two kinds of checks:

- an **event check** (registered with :func:`check`) looks at one workload event of the kinds
  its alert type lists in ``event_kinds`` and returns a :class:`Hit` or None. It receives the
  event's facts (see :mod:`telltale.engine.facts`): a plain tuple of the fields checks of that
  kind read, extracted once per event, or the Event itself for kinds without one;
- a **node check** (registered with :func:`node_check`) looks at one host state report and
  returns every hit it finds in it (one per interface, setting or listener). The
  ``ignore_nodes`` parameter every node-state type has is applied by evaluation, not by the
  check.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple, cast

from telltale.engine.countries import NO_COUNTRIES, CountryLookup
from telltale.engine.facts import normal_path
from telltale.engine.params import ParamValue
from telltale.v1 import agent_pb2, common_pb2

__all__ = [
    "CHECKS",
    "NODE_CHECKS",
    "Check",
    "CheckFactory",
    "Context",
    "Hit",
    "NodeCheck",
    "NodeCheckFactory",
    "check",
    "node_check",
    "normal_path",
]


class Hit(NamedTuple):
    """What a check found.

    ``subject`` is what the finding is about (it is part of the fingerprint); ``text`` completes
    the summary after the workload's (or node's) name ("launched /bin/sh"); ``path`` and
    ``destination`` are what exceptions with those fields are matched against. ``binary`` is the
    acting program for node-state hits (for event hits the event's process says it).
    """

    subject: str
    text: str
    path: str = ""
    destination: str = ""
    binary: str = ""


@dataclass(frozen=True, slots=True)
class Context:
    """What checks may consult besides their parameters, fixed when a policy is compiled.

    ``countries`` maps an address to its ISO 3166 country code; it must be pure (no I/O per
    call) since checks call it while evaluating.
    """

    countries: CountryLookup = NO_COUNTRIES


Check = Callable[[Any], Hit | None]
"""An event check: takes the facts of the event (see :mod:`telltale.engine.facts`)."""
CheckFactory = Callable[[Mapping[str, ParamValue], Context], Check | None]
NodeCheck = Callable[[agent_pb2.NodeState], list[Hit]]
NodeCheckFactory = Callable[[Mapping[str, ParamValue], Context], NodeCheck | None]

CHECKS: dict[str, CheckFactory] = {}
"""Event check factories by alert type id."""
NODE_CHECKS: dict[str, NodeCheckFactory] = {}
"""Node check factories by alert type id."""


def check(type_id: str) -> Callable[[CheckFactory], CheckFactory]:
    """Register the decorated function as the event check factory of alert type ``type_id``."""

    def register(factory: CheckFactory) -> CheckFactory:
        if type_id in CHECKS or type_id in NODE_CHECKS:
            raise ValueError(f"two checks for {type_id}")
        CHECKS[type_id] = factory
        return factory

    return register


def node_check(type_id: str) -> Callable[[NodeCheckFactory], NodeCheckFactory]:
    """Register the decorated function as the node check factory of alert type ``type_id``."""

    def register(factory: NodeCheckFactory) -> NodeCheckFactory:
        if type_id in CHECKS or type_id in NODE_CHECKS:
            raise ValueError(f"two checks for {type_id}")
        NODE_CHECKS[type_id] = factory
        return factory

    return register


# Typed access to validated parameters.


def strings(params: Mapping[str, ParamValue], name: str) -> tuple[str, ...]:
    """The ``strings`` parameter ``name``."""
    return cast(tuple[str, ...], params[name])


def ints(params: Mapping[str, ParamValue], name: str) -> tuple[int, ...]:
    """The ``ints`` parameter ``name``."""
    return cast(tuple[int, ...], params[name])


def integer(params: Mapping[str, ParamValue], name: str) -> int:
    """The ``int`` parameter ``name``."""
    return cast(int, params[name])


def flag(params: Mapping[str, ParamValue], name: str) -> bool:
    """The ``bool`` parameter ``name``."""
    return cast(bool, params[name])


# Event facts.

EINTR = 4
EINPROGRESS = 115
EALREADY = 114
PENDING = frozenset({0, EINTR, EINPROGRESS, EALREADY})
"""Errors of a connect that has not failed (yet): non-blocking sockets report EINPROGRESS."""
INET = frozenset({"inet", "inet6"})
WILDCARDS = frozenset({"0.0.0.0", "::"})

SOCK_TYPE_MASK = 0xF  # strips SOCK_NONBLOCK / SOCK_CLOEXEC
SOCK_STREAM = 1
SOCK_DGRAM = 2
SOCK_RAW = 3
TRANSPORTS = {SOCK_STREAM: "tcp", SOCK_DGRAM: "udp"}


def failed(event: common_pb2.Event) -> bool:
    """True when the call is known to have failed."""
    result = event.result
    return result.known and result.error_number != 0


def connect_failed(event: common_pb2.Event) -> bool:
    """True when a connect (or send) is known to have failed; in progress, as for non-blocking
    sockets, is not a failure."""
    result = event.result
    return result.known and result.error_number not in PENDING


def transport(sock_type: int) -> str:
    """``tcp``, ``udp`` or ``typeN`` for a socket type without flags."""
    return TRANSPORTS.get(sock_type) or f"type{sock_type}"


def program_of(process: common_pb2.ProcessInfo) -> str:
    """The acting program's path, or its argv[0], or a placeholder."""
    return process.exe or (process.argv[0] if process.argv else "") or "an unknown program"


def resolve_program(path: str, cwd: str) -> str | None:
    """The normalised absolute path of a program run as ``path`` from directory ``cwd``.

    None for a bare name (looked up in PATH, so unknown here) or a relative path with no known
    directory. Symbolic links are not resolved.
    """
    if not path.startswith("/"):
        if "/" not in path or not cwd.startswith("/"):
            return None
        path = f"{cwd}/{path}"
    elif "/." not in path and "//" not in path:
        return path
    return "/" + posixpath.normpath(path).lstrip("/")


# Matching helpers.


_WILDCARD = re.compile(r"[*?\[]")


def globs(patterns: Iterable[str], *, remember: bool = False) -> Callable[[str], bool] | None:
    """One matcher for several shell-style globs (``*`` also matches ``/``); None for no patterns.

    Most patterns are a literal, a literal followed by ``*`` or ``*`` followed by a literal:
    those are tested with set membership, ``startswith`` and ``endswith``, much cheaper than an
    expression. The other patterns form one expression, tried only on text that starts like
    one of them, and whose latest answers the matcher remembers. With ``remember``, the matcher
    remembers its latest answers for any text: worth it for text drawn from a small set that
    comes back again and again (program names), not for paths.
    """
    literals: set[str] = set()
    prefixes: list[str] = []
    suffixes: list[str] = []
    others: list[str] = []
    leads: list[str] = []  # the literal beginning of each of the others
    for pattern in patterns:
        wildcards = [m.start() for m in _WILDCARD.finditer(pattern)]
        if not wildcards:
            literals.add(pattern)
        elif wildcards == [len(pattern) - 1] and pattern.endswith("*"):
            prefixes.append(pattern[:-1])
        elif wildcards == [0] and pattern.startswith("*"):
            suffixes.append(pattern[1:])
        else:
            others.append(pattern)
            leads.append(pattern[: wildcards[0]])
    if not (literals or prefixes or suffixes or others):
        return None
    known = frozenset(literals)
    starts = tuple(prefixes)
    ends = tuple(suffixes)
    if not others:

        def simple(text: str) -> bool:
            return text in known or text.startswith(starts) or text.endswith(ends)

        return lru_cache(maxsize=4096)(simple) if remember else simple
    firsts = tuple(leads)  # text can only match a pattern if it starts like it
    regex = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in others), re.DOTALL).match

    @lru_cache(maxsize=4096)
    def expression(text: str) -> bool:
        return regex(text) is not None

    def matches(text: str) -> bool:
        return (
            text in known
            or text.startswith(starts)
            or text.endswith(ends)
            or (text.startswith(firsts) and expression(text))
        )

    return lru_cache(maxsize=4096)(matches) if remember else matches


def path_or_name_globs(patterns: Iterable[str]) -> Callable[[str], bool] | None:
    """A matcher of program paths: patterns with a ``/`` match the whole path, patterns without
    one match the program name (the last path component). None for no patterns."""
    patterns = tuple(patterns)
    whole = globs((p for p in patterns if "/" in p), remember=True)
    name = globs((p for p in patterns if "/" not in p), remember=True)
    if whole is None and name is None:
        return None

    def matches(path: str) -> bool:
        return (whole is not None and whole(path)) or (name is not None and name(path.rpartition("/")[2]))

    return matches


def under(directories: Iterable[str]) -> tuple[str, ...]:
    """Prefixes that match paths below each directory (``/tmp`` gives ``/tmp/``)."""
    return tuple(d.rstrip("/") + "/" for d in directories)
