"""Validation errors of policy documents and messages.

A document is either accepted whole or rejected with every problem found, each naming the field
path it concerns (``spec.rules.process.shell_launched.params.shells[2]``) and the offending value.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from telltale.v1 import policy_pb2


@dataclass(frozen=True, slots=True)
class Violation:
    """One problem: the path of the offending field and what is wrong with it.

    ``field`` is empty when the problem concerns the whole document (a YAML syntax error).
    """

    field: str
    description: str

    def __str__(self) -> str:
        return f"{self.field}: {self.description}" if self.field else self.description

    def to_proto(self) -> policy_pb2.FieldViolation:
        """This problem as the FieldViolation message of the API."""
        return policy_pb2.FieldViolation(field=self.field, description=self.description)


class PolicyValidationError(ValueError):
    """A policy document or message is invalid; ``violations`` lists every problem found."""

    violations: tuple[Violation, ...]

    def __init__(self, violations: Iterable[Violation]) -> None:
        self.violations = tuple(violations)
        count = len(self.violations)
        head = f"invalid policy ({count} problem{'s' if count != 1 else ''})"
        super().__init__("; ".join([head, *map(str, self.violations)]))


def show(value: object) -> str:
    """Render a value as the user wrote it, for use inside a violation description."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return repr(value)


def type_name(value: object) -> str:
    """Name the kind of a decoded YAML value, for "expected X, got Y" descriptions."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def got(value: object) -> str:
    """Describe a value of the wrong type: its kind, and the value itself when it is short."""
    if value is None or isinstance(value, dict | list | tuple):
        return show(value) if value is None else type_name(value)
    return f"{type_name(value)} {show(value)}"
