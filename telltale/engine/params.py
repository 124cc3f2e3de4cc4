"""Typed trigger parameters of alert types: their declaration, validation and wire form.

A parameter has one of five types: ``string``, ``int``, ``bool``, ``strings`` (a list of
strings) or ``ints`` (a list of integers). Validated values are plain Python values, with lists
as tuples so that a validated rule is immutable.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from telltale.engine.errors import Violation, got, show
from telltale.engine.linux import CAPABILITY_BITS
from telltale.v1 import policy_pb2

ParamType = Literal["string", "int", "bool", "strings", "ints"]
ParamValue = str | int | bool | tuple[str, ...] | tuple[int, ...]
ItemCheck = Callable[[Any], str | None]
"""Checks one value (one item, for list types); returns what is wrong with it, or None."""

PARAM_TYPES: tuple[ParamType, ...] = ("string", "int", "bool", "strings", "ints")

_EXPECTED: dict[ParamType, str] = {
    "string": "a string",
    "int": "an integer",
    "bool": "a boolean",
    "strings": "a list of strings",
    "ints": "a list of integers",
}


@dataclass(frozen=True, slots=True)
class ParamSpec:
    """One trigger parameter of an alert type.

    ``check`` validates a value beyond its type (each item, for list types); it is part of the
    declaration but not of its identity.
    """

    name: str
    type: ParamType
    description: str
    default: ParamValue
    check: ItemCheck | None = field(default=None, compare=False, repr=False)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_scalar_of(kind: ParamType, value: object) -> bool:
    if kind in ("string", "strings"):
        return isinstance(value, str)
    if kind in ("int", "ints"):
        return _is_int(value)
    return isinstance(value, bool)


def coerce(spec: ParamSpec, raw: object, path: str, errors: list[Violation]) -> ParamValue | None:
    """Validate ``raw`` against ``spec``; return the typed value, or None after recording problems.

    Problems are appended to ``errors`` with ``path`` (or ``path[i]`` for one list item).
    """
    if spec.type in ("strings", "ints"):
        if not isinstance(raw, list | tuple):
            errors.append(Violation(path, f"expected {_EXPECTED[spec.type]}, got {got(raw)}"))
            return None
        item_kind: ParamType = "string" if spec.type == "strings" else "int"
        ok = True
        for index, item in enumerate(raw):
            item_path = f"{path}[{index}]"
            if not _is_scalar_of(item_kind, item):
                errors.append(Violation(item_path, f"expected {_EXPECTED[item_kind]}, got {got(item)}"))
                ok = False
            elif spec.check is not None and (problem := spec.check(item)) is not None:
                errors.append(Violation(item_path, problem))
                ok = False
        return tuple(raw) if ok else None
    if not _is_scalar_of(spec.type, raw):
        errors.append(Violation(path, f"expected {_EXPECTED[spec.type]}, got {got(raw)}"))
        return None
    if spec.check is not None and (problem := spec.check(raw)) is not None:
        errors.append(Violation(path, problem))
        return None
    assert isinstance(raw, str | int)  # bool is an int
    return raw


def to_proto_value(kind: ParamType, value: ParamValue) -> policy_pb2.ParamValue:
    """Encode a validated value of type ``kind`` as a ParamValue message."""
    if kind == "strings":
        assert isinstance(value, tuple)
        return policy_pb2.ParamValue(strings=policy_pb2.StringList(values=[str(v) for v in value]))
    if kind == "ints":
        assert isinstance(value, tuple)
        return policy_pb2.ParamValue(ints=policy_pb2.IntList(values=[int(v) for v in value]))
    if kind == "bool":
        return policy_pb2.ParamValue(bool_value=bool(value))
    if kind == "int":
        assert _is_int(value)
        return policy_pb2.ParamValue(int_value=int(value))  # type: ignore[arg-type]
    return policy_pb2.ParamValue(string_value=str(value))


def from_proto_value(message: policy_pb2.ParamValue) -> object:
    """Decode a ParamValue into the plain value it carries (None when no value is set)."""
    which = message.WhichOneof("value")
    if which == "strings":
        return list(message.strings.values)
    if which == "ints":
        return list(message.ints.values)
    if which == "string_value":
        return message.string_value
    if which == "int_value":
        return message.int_value
    if which == "bool_value":
        return message.bool_value
    return None


# Item checks shared by the catalog's parameters.


def program_name(value: str) -> str | None:
    """A program name without a directory, such as ``bash``."""
    if not value or "/" in value:
        return f"{show(value)} must be a program name without '/'"
    return None


def absolute_path(value: str) -> str | None:
    """An absolute path, such as ``/tmp``."""
    if not value.startswith("/"):
        return f"{show(value)} must be an absolute path"
    return None


def port(value: int) -> str | None:
    """A TCP/UDP port number, 0 to 65535."""
    if not 0 <= value <= 65535:
        return f"{value} is not a port number (0-65535)"
    return None


def cidr(value: str) -> str | None:
    """An IPv4 or IPv6 network in CIDR notation, or a single address."""
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        return f"{show(value)} is not a CIDR or address: {exc}"
    return None


def glob(value: str) -> str | None:
    """A non-empty shell-style pattern (``*`` also matches ``/``)."""
    if not value.strip():
        return "a pattern must not be empty"
    return None


def program_glob(value: str) -> str | None:
    """A pattern on a program name, without a directory, such as ``python3*``."""
    if not value.strip() or "/" in value:
        return f"{show(value)} must be a program name pattern without '/'"
    return None


_COUNTRY = re.compile(r"[A-Z]{2}")


def country_code(value: str) -> str | None:
    """An ISO 3166-1 alpha-2 country code in capitals, such as ``US``."""
    if not _COUNTRY.fullmatch(value):
        return f"{show(value)} is not an ISO 3166-1 alpha-2 country code (two capital letters, e.g. 'US')"
    return None


def capability(value: str) -> str | None:
    """A Linux capability name, such as ``CAP_SYS_ADMIN``."""
    if value not in CAPABILITY_BITS:
        return f"{show(value)} is not a Linux capability name (e.g. 'CAP_SYS_ADMIN')"
    return None


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def function_name(value: str) -> str | None:
    """A C function name, such as ``strcpy``."""
    if not _IDENTIFIER.fullmatch(value):
        return f"{show(value)} is not a function name"
    return None


def non_negative(value: int) -> str | None:
    """An integer of at least 0."""
    if value < 0:
        return f"{value} must not be negative"
    return None


_SYSCTL = re.compile(r"[a-z0-9_][a-z0-9_.\-/]*")


def sysctl_name(value: str) -> str | None:
    """A kernel setting name in dotted form, such as ``net.ipv4.ip_forward``."""
    if not _SYSCTL.fullmatch(value):
        return f"{show(value)} is not a kernel setting name (e.g. 'net.ipv4.ip_forward')"
    return None


SYSCTL_EXPECTATION = re.compile(r"([a-z0-9_][a-z0-9_.\-/]*)(>=|<=|=)(-?[0-9]+)")


def sysctl_expectation(value: str) -> str | None:
    """A kernel setting and the value it should have: ``name=N``, ``name>=N`` or ``name<=N``."""
    if not SYSCTL_EXPECTATION.fullmatch(value):
        return f"{show(value)} must read NAME=N, NAME>=N or NAME<=N (e.g. 'kernel.kptr_restrict>=1')"
    return None


TLS_VERSIONS = ("SSLv2", "SSLv3", "TLSv1.0", "TLSv1.1", "TLSv1.2", "TLSv1.3")


def tls_version(value: str) -> str | None:
    """A protocol version name: SSLv2, SSLv3, TLSv1.0, TLSv1.1, TLSv1.2 or TLSv1.3."""
    if value not in TLS_VERSIONS:
        return f"{show(value)} is not a protocol version (expected one of: {', '.join(TLS_VERSIONS)})"
    return None


def hostname(value: str) -> str | None:
    """A host name, such as ``metadata.google.internal``."""
    if not value or len(value) > 253 or any(c.isspace() for c in value) or "/" in value:
        return f"{show(value)} is not a host name"
    return None


def word(value: str) -> str | None:
    """A non-empty word without spaces (an algorithm or purpose name)."""
    if not value or any(c.isspace() for c in value):
        return f"{show(value)} must be a non-empty word without spaces"
    return None
