"""Typed trigger parameters of alert types: their declaration, validation and wire form.

A parameter has one of five types: ``string``, ``int``, ``bool``, ``strings`` (a list of
strings) or ``ints`` (a list of integers). Validated values are plain Python values, with lists
as tuples so that a validated rule is immutable.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from telltale.engine.errors import Violation, got, show
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
