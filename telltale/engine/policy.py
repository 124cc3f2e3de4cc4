"""Policies as documents: the YAML format, its validation, and the wire form.

A policy document::

    apiVersion: telltale.dev/v1
    kind: AlertPolicy
    metadata:
      name: Standard
      description: "..."
    spec:
      rules:
        process.shell_launched:
          enabled: true          # default true: listing a rule enables it
          priority: P2           # P1..P4; default from the catalog
          action: alert          # alert | block (block only for blockable types)
          params:
            shells: [sh, bash]   # missing parameters take catalog defaults
          exceptions:
            - binary: /usr/bin/* # any of application, component, binary, path, destination
              reason: health checks          # required
              expires: 2027-01-01T00:00:00Z  # optional, RFC 3339

``metadata`` may also carry ``revision``, ``clonedFrom``, ``updatedBy`` and ``updatedAt``, which
:func:`to_document` writes so that a document read back gives the same policy.

Decoding is all or nothing: an invalid document raises PolicyValidationError listing every
problem with its field path. The model lives in :mod:`telltale.engine.model` and is re-exported
here; the wire form in :mod:`telltale.engine.policy_proto`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Any

from telltale.engine.catalog import CATALOG, AlertTypeSpec
from telltale.engine.errors import PolicyValidationError, Violation, got, show
from telltale.engine.model import (
    ACTION_NAMES,
    API_VERSION,
    KIND,
    PRIORITY_NAMES,
    Action,
    Policy,
    Priority,
    Rule,
    RuleException,
    build_exception,
    build_rule,
    name_problem,
)
from telltale.engine.policy_proto import from_proto, to_proto
from telltale.engine.timefmt import format_rfc3339, parse_rfc3339
from telltale.engine.yamlio import FlowList, dump, join, line_of, load
from telltale.v1 import policy_pb2

__all__ = [
    "API_VERSION",
    "KIND",
    "Policy",
    "PolicyValidationError",
    "Rule",
    "RuleException",
    "Violation",
    "from_mapping",
    "from_proto",
    "name_problem",
    "parse_document",
    "to_document",
    "to_mapping",
    "to_proto",
    "validate",
]

_TOP_KEYS = ("apiVersion", "kind", "metadata", "spec")
_METADATA_KEYS = ("name", "description", "revision", "clonedFrom", "updatedBy", "updatedAt")
_SPEC_KEYS = ("rules",)
_RULE_KEYS = ("enabled", "priority", "action", "params", "exceptions")
_EXCEPTION_KEYS = ("application", "component", "binary", "path", "destination", "reason", "expires")
_PRIORITIES = {name: value for value, name in PRIORITY_NAMES.items()}
_ACTIONS = {name: value for value, name in ACTION_NAMES.items()}


def parse_document(text: str, *, builtin: bool = False) -> Policy:
    """Decode and validate a YAML policy document.

    ``builtin`` marks the policy as one shipped with telltale. Raises PolicyValidationError
    listing every problem; each description ends with the line it concerns when known.
    """
    data, lines, problems = load(text)  # problems found while reading already name their line
    try:
        policy = from_mapping(data, builtin=builtin)
    except PolicyValidationError as exc:
        # A value the reader already refused (an alias, a bad tag) reads as null: skip the echoes.
        refused = tuple(v.field for v in problems)
        problems.extend(_with_line(v, lines) for v in exc.violations if not _within(v.field, refused))
    if problems:
        raise PolicyValidationError(problems)
    return policy


def _within(field: str, fields: tuple[str, ...]) -> bool:
    return any(field == f or field.startswith((f"{f}.", f"{f}[")) for f in fields)


def _with_line(violation: Violation, lines: dict[str, int]) -> Violation:
    line = line_of(violation.field, lines)
    if line is None:
        return violation
    return Violation(violation.field, f"{violation.description} (line {line})")


class _Reader:
    """Checks the shape of decoded YAML data, recording problems instead of stopping at one."""

    def __init__(self) -> None:
        self.errors: list[Violation] = []

    def problem(self, at: str, description: str) -> None:
        self.errors.append(Violation(at, description))

    def mapping(
        self, value: object, at: str, keys: tuple[str, ...], *, optional: bool = False
    ) -> dict[str, Any]:
        """The mapping at ``at`` (empty when null and ``optional``); unknown keys are problems."""
        if value is None and optional:
            return {}
        if not isinstance(value, dict):
            self.problem(at, f"expected a mapping, got {got(value)}")
            return {}
        for key in value:
            if key not in keys:
                self.problem(join(at, key), f"unknown field {show(key)} (expected one of: {', '.join(keys)})")
        return value

    def text(self, value: object, at: str, default: str = "") -> str:
        if value is None:
            return default
        if not isinstance(value, str):
            self.problem(at, f"expected a string, got {got(value)}")
            return default
        return value

    def time(self, value: object, at: str) -> int | None:
        if value is None:
            return None
        if isinstance(value, datetime) and value.tzinfo is not None:  # from yaml.safe_load callers
            value = value.isoformat()
        if not isinstance(value, str):
            self.problem(at, f"expected an RFC 3339 timestamp, got {got(value)}")
            return None
        try:
            return parse_rfc3339(value)
        except ValueError as exc:
            self.problem(at, f"{show(value)}: {exc}")
            return None


def from_mapping(obj: object, *, builtin: bool = False) -> Policy:
    """Validate decoded document data (as from ``yaml.safe_load``) and build the policy.

    Raises PolicyValidationError listing every problem.
    """
    if not isinstance(obj, dict):
        raise PolicyValidationError([Violation("", f"a policy document is a mapping, got {got(obj)}")])
    r = _Reader()
    doc = r.mapping(obj, "", _TOP_KEYS)
    for key, expected in (("apiVersion", API_VERSION), ("kind", KIND)):
        value = doc.get(key)
        if value is None:
            r.problem(key, f"missing; expected {show(expected)}")
        elif value != expected:
            r.problem(key, f"unknown {key} {show(value)}; expected {show(expected)}")

    if "metadata" in doc:
        meta = r.mapping(doc["metadata"], "metadata", _METADATA_KEYS)
        if isinstance(doc["metadata"], dict) and "name" not in meta:
            r.problem("metadata.name", "missing; a policy needs a name")
    else:
        meta = {}
        r.problem("metadata", "missing; a policy needs metadata.name")
    name = r.text(meta.get("name"), "metadata.name")
    if isinstance(meta.get("name"), str) and (problem := name_problem(name)):
        r.problem("metadata.name", problem)
    revision = meta.get("revision", 0)
    if not isinstance(revision, int) or isinstance(revision, bool) or revision < 0:
        r.problem("metadata.revision", f"expected a non-negative integer, got {show(revision)}")
        revision = 0
    description = r.text(meta.get("description"), "metadata.description")
    cloned_from = r.text(meta.get("clonedFrom"), "metadata.clonedFrom")
    if cloned_from and (problem := name_problem(cloned_from)):
        r.problem("metadata.clonedFrom", problem)
    updated_by = r.text(meta.get("updatedBy"), "metadata.updatedBy")
    updated_at = r.time(meta.get("updatedAt"), "metadata.updatedAt")

    if "spec" not in doc:
        r.problem("spec", "missing; a policy needs spec.rules")
    spec = r.mapping(doc.get("spec"), "spec", _SPEC_KEYS, optional=True)
    raw_rules = spec.get("rules")
    if raw_rules is not None and not isinstance(raw_rules, dict):
        r.problem(
            "spec.rules",
            f"expected a mapping of alert type to rule, got {got(raw_rules)}",
        )
        raw_rules = None
    rules: dict[str, Rule] = {}
    for type_id, body in (raw_rules or {}).items():
        alert_type = CATALOG.get(type_id)
        if alert_type is None:
            r.problem(f"spec.rules.{type_id}", f"unknown alert type {show(type_id)}")
            continue
        rule = _rule(r, alert_type, body, f"spec.rules.{type_id}")
        if rule is not None:
            rules[type_id] = rule
    if r.errors:
        raise PolicyValidationError(r.errors)
    return Policy(
        name=name,
        description=description,
        builtin=builtin,
        revision=revision,
        rules=_ordered(rules),
        cloned_from=cloned_from,
        updated_by=updated_by,
        updated_at_ns=updated_at or 0,
    )


def _rule(r: _Reader, spec: AlertTypeSpec, body: object, at: str) -> Rule | None:
    fields = r.mapping(body, at, _RULE_KEYS, optional=True)
    enabled = fields.get("enabled", True)
    if not isinstance(enabled, bool):
        r.problem(f"{at}.enabled", f"expected true or false, got {show(enabled)}")
    priority: Priority | None = None
    if "priority" in fields:
        priority = _PRIORITIES.get(fields["priority"]) if isinstance(fields["priority"], str) else None
        if priority is None:
            r.problem(
                f"{at}.priority", f"unknown priority {show(fields['priority'])}; expected P1, P2, P3 or P4"
            )
    action: Action = policy_pb2.RULE_ACTION_ALERT
    if "action" in fields:
        found = _ACTIONS.get(fields["action"]) if isinstance(fields["action"], str) else None
        if found is None:
            r.problem(f"{at}.action", f"unknown action {show(fields['action'])}; expected alert or block")
        else:
            action = found
    params = fields.get("params")
    if params is not None and not isinstance(params, dict):
        r.problem(f"{at}.params", f"expected a mapping, got {got(params)}")
        params = None
    raw_exceptions = fields.get("exceptions")
    if raw_exceptions is not None and not isinstance(raw_exceptions, list):
        r.problem(f"{at}.exceptions", f"expected a list, got {got(raw_exceptions)}")
        raw_exceptions = None
    exceptions = [
        _exception(r, spec, item, f"{at}.exceptions[{index}]")
        for index, item in enumerate(raw_exceptions or ())
    ]
    return build_rule(
        spec,
        enabled=enabled is True,
        priority=priority,
        action=action,
        params=[(name, value, f"{at}.params.{name}") for name, value in (params or {}).items()],
        exceptions=exceptions,
        at=at,
        action_at=f"{at}.action",
        errors=r.errors,
    )


def _exception(r: _Reader, spec: AlertTypeSpec, item: object, at: str) -> RuleException | None:
    before = len(r.errors)
    fields = r.mapping(item, at, _EXCEPTION_KEYS)
    if isinstance(item, dict) and "reason" not in fields:
        r.problem(f"{at}.reason", "missing; an exception needs a reason")
    texts = {key: r.text(fields.get(key), f"{at}.{key}") for key in _EXCEPTION_KEYS if key != "expires"}
    expires_ns = r.time(fields.get("expires"), f"{at}.expires")
    if len(r.errors) > before:
        return None
    return build_exception(spec, **texts, expires_ns=expires_ns, at=at, errors=r.errors)


def _ordered(rules: Mapping[str, Rule]) -> Mapping[str, Rule]:
    return MappingProxyType({type_id: rules[type_id] for type_id in CATALOG if type_id in rules})


def to_mapping(policy: Policy) -> dict[str, Any]:
    """The document form of ``policy`` as plain data (rules in catalog order)."""
    metadata: dict[str, Any] = {"name": policy.name}
    if policy.description:
        metadata["description"] = policy.description
    if policy.revision:
        metadata["revision"] = policy.revision
    if policy.cloned_from:
        metadata["clonedFrom"] = policy.cloned_from
    if policy.updated_by:
        metadata["updatedBy"] = policy.updated_by
    if policy.updated_at_ns:
        metadata["updatedAt"] = format_rfc3339(policy.updated_at_ns)
    rules: dict[str, Any] = {}
    ordered = [t for t in CATALOG if t in policy.rules] + [t for t in policy.rules if t not in CATALOG]
    for type_id in ordered:
        rule = policy.rules[type_id]
        body: dict[str, Any] = {
            "enabled": rule.enabled,
            "priority": PRIORITY_NAMES.get(rule.priority, rule.priority),
            "action": ACTION_NAMES.get(rule.action, rule.action),
        }
        if rule.params:
            body["params"] = {
                name: FlowList(value) if isinstance(value, tuple) else value
                for name, value in rule.params.items()
            }
        if rule.exceptions:
            body["exceptions"] = [_exception_mapping(e) for e in rule.exceptions]
        rules[type_id] = body
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": {"rules": rules}}


def _exception_mapping(exception: RuleException) -> dict[str, Any]:
    out: dict[str, Any] = {
        key: value
        for key in ("application", "component", "binary", "path", "destination")
        if (value := getattr(exception, key))
    }
    out["reason"] = exception.reason
    if exception.expires_ns is not None:
        out["expires"] = format_rfc3339(exception.expires_ns)
    return out


def to_document(policy: Policy) -> str:
    """Write ``policy`` as a YAML document; ``parse_document`` of the result gives it back."""
    return dump(to_mapping(policy))


def validate(policy: Policy) -> Policy:
    """Check a policy built in code (a clone, an edit) as if it had been written as a document.

    Returns the policy in its normal form (complete parameters, rules in catalog order). Raises
    PolicyValidationError with document field paths.
    """
    return from_mapping(to_mapping(policy), builtin=policy.builtin)
