"""The policy model: immutable policies, rules and exceptions, and the checks they must pass.

The document format (:mod:`telltale.engine.policy`) and the wire format both decode their input
into plain values and hand them to :func:`build_rule` and :func:`build_exception`, so both apply
the same rules and report problems the same way, each with its own field paths.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeAlias

from telltale.engine.catalog import AlertTypeSpec
from telltale.engine.errors import Violation, show
from telltale.engine.params import ParamValue, coerce
from telltale.v1 import common_pb2, policy_pb2

Priority: TypeAlias = common_pb2.Priority.ValueType
Action: TypeAlias = policy_pb2.RuleAction.ValueType

API_VERSION = "telltale.dev/v1"
KIND = "AlertPolicy"

PRIORITY_NAMES: Mapping[Priority, str] = MappingProxyType(
    {
        common_pb2.PRIORITY_P1: "P1",
        common_pb2.PRIORITY_P2: "P2",
        common_pb2.PRIORITY_P3: "P3",
        common_pb2.PRIORITY_P4: "P4",
    }
)
ACTION_NAMES: Mapping[Action, str] = MappingProxyType(
    {policy_pb2.RULE_ACTION_ALERT: "alert", policy_pb2.RULE_ACTION_BLOCK: "block"}
)

_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9 ._-]{0,61}[A-Za-z0-9._-])?")


@dataclass(frozen=True, slots=True)
class RuleException:
    """Exempts occurrences from a rule; every non-empty scope field must match.

    ``binary`` and ``path`` are globs (``*`` also matches ``/``); ``destination`` is a network in
    CIDR notation or an address. ``expires_ns`` (nanoseconds since the epoch) ends it; None
    means it never expires.
    """

    reason: str
    application: str = ""
    component: str = ""
    binary: str = ""
    path: str = ""
    destination: str = ""
    expires_ns: int | None = None


@dataclass(frozen=True, slots=True)
class Rule:
    """The configuration of one alert type inside a policy.

    ``params`` is complete: every parameter of the alert type is present, with the catalog
    default where the policy did not set it.
    """

    alert_type: str
    enabled: bool
    priority: Priority
    action: Action
    params: Mapping[str, ParamValue]
    exceptions: tuple[RuleException, ...] = ()


@dataclass(frozen=True, slots=True)
class Policy:
    """A named, immutable set of rules; alert types without a rule are disabled.

    ``updated_at_ns`` is 0 when unknown.
    """

    name: str
    description: str = ""
    builtin: bool = False
    revision: int = 0
    rules: Mapping[str, Rule] = field(default_factory=lambda: MappingProxyType({}))
    cloned_from: str = ""
    updated_by: str = ""
    updated_at_ns: int = 0


def name_problem(name: str) -> str | None:
    """Say what makes ``name`` invalid as a policy name, or return None when it is valid.

    A name has 1 to 63 characters: letters, digits, spaces, ``.``, ``_`` and ``-``; it starts
    with a letter or digit and does not end with a space.
    """
    if _NAME.fullmatch(name):
        return None
    return (
        f"{show(name)} is not a valid policy name: 1-63 letters, digits, spaces, '.', '_' or '-', "
        "starting with a letter or digit and not ending with a space"
    )


def build_exception(
    spec: AlertTypeSpec,
    *,
    reason: str,
    application: str,
    component: str,
    binary: str,
    path: str,
    destination: str,
    expires_ns: int | None,
    at: str,
    errors: list[Violation],
) -> RuleException | None:
    """Check one exception of a rule of type ``spec``; ``at`` is the exception's field path.

    Empty scope fields mean "any". Appends problems to ``errors`` and returns None if any.
    """
    before = len(errors)
    if not reason.strip():
        errors.append(Violation(f"{at}.reason", "an exception needs a reason"))
    if not (application or component or binary or path or destination):
        errors.append(
            Violation(
                at,
                "an exception must name at least one of application, component, binary, path, "
                "destination (disable the rule instead of excepting everything)",
            )
        )
    for scope, value in (("path", path), ("destination", destination)):
        if value and scope not in spec.exception_scopes:
            errors.append(Violation(f"{at}.{scope}", f"{scope} never applies to {spec.id} alerts"))
    if destination:
        try:
            ipaddress.ip_network(destination, strict=True)
        except ValueError as exc:
            errors.append(
                Violation(f"{at}.destination", f"{show(destination)} is not a CIDR or address: {exc}")
            )
    if len(errors) > before:
        return None
    return RuleException(
        reason=reason,
        application=application,
        component=component,
        binary=binary,
        path=path,
        destination=destination,
        expires_ns=expires_ns,
    )


def build_rule(
    spec: AlertTypeSpec,
    *,
    enabled: bool,
    priority: Priority | None,
    action: Action,
    params: Iterable[tuple[str, object, str]],
    exceptions: Iterable[RuleException | None],
    at: str,
    action_at: str,
    errors: list[Violation],
) -> Rule | None:
    """Check a rule of type ``spec``; ``at`` is the rule's field path.

    ``priority`` None takes the catalog default. ``params`` yields (name, raw value, field path)
    for each parameter the input set; the others take catalog defaults. ``exceptions`` are the
    results of :func:`build_exception` (None for one already reported as invalid). Appends
    problems to ``errors`` and returns None if any.
    """
    before = len(errors)
    if action == policy_pb2.RULE_ACTION_BLOCK and not spec.blockable:
        errors.append(Violation(action_at, f"'block' is not available for {spec.id}; use 'alert'"))
    values: dict[str, ParamValue] = {p.name: p.default for p in spec.params}
    for name, raw, param_at in params:
        param = spec.param(name)
        if param is None:
            known = ", ".join(p.name for p in spec.params) or "none"
            errors.append(
                Violation(param_at, f"unknown parameter {show(name)} of {spec.id} (known: {known})")
            )
            continue
        value = coerce(param, raw, param_at, errors)
        if value is not None:
            values[name] = value
    checked = tuple(exceptions)
    if len(errors) > before or any(e is None for e in checked):
        return None
    return Rule(
        alert_type=spec.id,
        enabled=enabled,
        priority=spec.default_priority if priority is None else priority,
        action=action,
        params=MappingProxyType(values),
        exceptions=tuple(e for e in checked if e is not None),
    )
