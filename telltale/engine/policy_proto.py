"""Policies as ``telltale.v1.Policy`` messages, validated exactly like documents.

Field paths in problems follow the message, rooted at the caller's name for it:
``policy.rules[2].params.ports[0]``.
"""

from __future__ import annotations

from types import MappingProxyType

from telltale.engine.catalog import CATALOG, AlertTypeSpec
from telltale.engine.errors import PolicyValidationError, Violation, show
from telltale.engine.model import (
    ACTION_NAMES,
    PRIORITY_NAMES,
    Policy,
    Priority,
    Rule,
    RuleException,
    build_exception,
    build_rule,
    name_problem,
)
from telltale.engine.params import from_proto_value, to_proto_value
from telltale.engine.timefmt import from_timestamp, timestamp_problem, to_timestamp
from telltale.v1 import policy_pb2

__all__ = ["from_proto", "to_proto"]


def to_proto(policy: Policy) -> policy_pb2.Policy:
    """Encode a policy as a Policy message (rules in catalog order, every parameter set)."""
    message = policy_pb2.Policy(
        name=policy.name,
        description=policy.description,
        builtin=policy.builtin,
        revision=policy.revision,
        updated_by=policy.updated_by,
        cloned_from=policy.cloned_from,
    )
    if policy.updated_at_ns:
        message.updated_at.CopyFrom(to_timestamp(policy.updated_at_ns))
    ordered = [t for t in CATALOG if t in policy.rules] + [t for t in policy.rules if t not in CATALOG]
    for type_id in ordered:
        message.rules.append(_rule_to_proto(policy.rules[type_id]))
    return message


def _rule_to_proto(rule: Rule) -> policy_pb2.Rule:
    message = policy_pb2.Rule(
        alert_type=rule.alert_type,
        enabled=rule.enabled,
        priority=rule.priority,
        action=rule.action,
        exceptions=[_exception_to_proto(e) for e in rule.exceptions],
    )
    spec = CATALOG.get(rule.alert_type)
    for name, value in rule.params.items():
        param = spec.param(name) if spec is not None else None
        if param is not None:
            message.params[name].CopyFrom(to_proto_value(param.type, value))
    return message


def _exception_to_proto(exception: RuleException) -> policy_pb2.RuleException:
    message = policy_pb2.RuleException(
        application=exception.application,
        component=exception.component,
        binary=exception.binary,
        path=exception.path,
        destination=exception.destination,
        reason=exception.reason,
    )
    if exception.expires_ns is not None:
        message.expires_at.CopyFrom(to_timestamp(exception.expires_ns))
    return message


def from_proto(message: policy_pb2.Policy, *, field: str = "policy") -> Policy:
    """Validate a Policy message and build the policy; ``field`` names the message in problems.

    Unset priorities take the catalog default, an unset action means alert, missing parameters
    take catalog defaults. Raises PolicyValidationError listing every problem.
    """
    errors: list[Violation] = []
    if problem := name_problem(message.name):
        errors.append(Violation(f"{field}.name", problem))
    if message.revision < 0:
        errors.append(Violation(f"{field}.revision", f"must not be negative, got {message.revision}"))
    if message.cloned_from and (problem := name_problem(message.cloned_from)):
        errors.append(Violation(f"{field}.cloned_from", problem))
    updated_at_ns = 0
    if message.HasField("updated_at"):
        if problem := timestamp_problem(message.updated_at):
            errors.append(Violation(f"{field}.updated_at", problem))
        else:
            updated_at_ns = from_timestamp(message.updated_at)
    rules: dict[str, Rule] = {}
    first_index: dict[str, int] = {}
    for index, rule_message in enumerate(message.rules):
        at = f"{field}.rules[{index}]"
        type_id = rule_message.alert_type
        spec = CATALOG.get(type_id)
        if spec is None:
            errors.append(Violation(f"{at}.alert_type", f"unknown alert type {show(type_id)}"))
            continue
        if type_id in first_index:
            errors.append(
                Violation(
                    f"{at}.alert_type",
                    f"second rule for {type_id} (first is {field}.rules[{first_index[type_id]}])",
                )
            )
            continue
        first_index[type_id] = index
        rule = _rule_from_proto(rule_message, spec, at, errors)
        if rule is not None:
            rules[type_id] = rule
    if errors:
        raise PolicyValidationError(errors)
    return Policy(
        name=message.name,
        description=message.description,
        builtin=message.builtin,
        revision=message.revision,
        rules=MappingProxyType({t: rules[t] for t in CATALOG if t in rules}),
        cloned_from=message.cloned_from,
        updated_by=message.updated_by,
        updated_at_ns=updated_at_ns,
    )


def _rule_from_proto(
    message: policy_pb2.Rule, spec: AlertTypeSpec, at: str, errors: list[Violation]
) -> Rule | None:
    priority: Priority | None = None
    if message.priority:
        if message.priority in PRIORITY_NAMES:
            priority = message.priority
        else:
            errors.append(
                Violation(f"{at}.priority", f"unknown priority {message.priority}; expected 1-4 (P1-P4)")
            )
    action = message.action or policy_pb2.RULE_ACTION_ALERT
    if action not in ACTION_NAMES:
        errors.append(Violation(f"{at}.action", f"unknown action {message.action}"))
        action = policy_pb2.RULE_ACTION_ALERT
    exceptions: list[RuleException | None] = []
    for index, item in enumerate(message.exceptions):
        item_at = f"{at}.exceptions[{index}]"
        expires_ns = None
        if item.HasField("expires_at"):
            if problem := timestamp_problem(item.expires_at):
                errors.append(Violation(f"{item_at}.expires_at", problem))
                exceptions.append(None)
                continue
            expires_ns = from_timestamp(item.expires_at)
        exceptions.append(
            build_exception(
                spec,
                reason=item.reason,
                application=item.application,
                component=item.component,
                binary=item.binary,
                path=item.path,
                destination=item.destination,
                expires_ns=expires_ns,
                at=item_at,
                errors=errors,
            )
        )
    return build_rule(
        spec,
        enabled=message.enabled,
        priority=priority,
        action=action,
        params=[
            (name, from_proto_value(message.params[name]), f"{at}.params.{name}")
            for name in sorted(message.params)
        ],
        exceptions=exceptions,
        at=at,
        action_at=f"{at}.action",
        errors=errors,
    )
