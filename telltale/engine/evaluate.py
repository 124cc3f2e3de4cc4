"""Evaluation: events of a workload against its policy, giving findings.

:class:`CompiledPolicy` prepares every enabled rule once (checks, globs, network ranges) and
hands each event only to the rules that look at its kind. :class:`PolicySet` picks the policy
of a workload and keeps the compiled form of each policy. Nothing here reads a clock: the
caller passes ``now_ns``, which decides whether an exception has expired.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from hashlib import blake2b
from types import MappingProxyType
from typing import NamedTuple

from telltale.engine.catalog import CATALOG, AlertTypeSpec
from telltale.engine.checks import CHECKS, Check, Hit
from telltale.engine.model import Action, Policy, Priority, Rule, RuleException
from telltale.engine.netranges import AddressRanges
from telltale.v1 import common_pb2

__all__ = ["CompiledPolicy", "Finding", "PolicySet", "fingerprint"]

_NS = 1_000_000_000


class Finding(NamedTuple):
    """One rule match: what an alert is made of. Immutable.

    ``time_ns`` and ``last_time_ns`` are the first and last occurrence this finding stands for
    (equal for a single event; :func:`telltale.engine.alerts.coalesce` widens them); ``count``
    is how many occurrences it stands for. (A named tuple because evaluation creates many and
    tuples are the cheapest immutable record; compare findings by field, not by position.)
    """

    fingerprint: str
    alert_type: str
    category: common_pb2.Category.ValueType
    priority: Priority
    action: Action
    title: str
    summary: str
    subject: str
    application: str
    component: str
    policy: str
    policy_revision: int
    count: int  # type: ignore[assignment]  # the field replaces tuple.count, which findings never need
    time_ns: int
    last_time_ns: int


@lru_cache(maxsize=65536)
def fingerprint(alert_type: str, application: str, component: str, subject: str) -> str:
    """The stable identity of a finding: 32 hex digits over type, application, component, subject.

    The node and the process are deliberately left out, so the same behaviour of an application
    on many nodes is one alert.
    """
    data = "\x1f".join((alert_type, application, component, subject)).encode("utf-8", "surrogatepass")
    return blake2b(data, digest_size=16).hexdigest()


def _glob(pattern: str) -> Callable[[str], object] | None:
    return re.compile(fnmatch.translate(pattern), re.DOTALL).match if pattern else None


class _Exception:
    """An exception prepared for matching; empty fields are None and match anything."""

    __slots__ = ("application", "binary", "component", "destination", "expires_ns", "path")

    def __init__(self, exception: RuleException) -> None:
        self.application = exception.application or None
        self.component = exception.component or None
        self.binary = _glob(exception.binary)
        self.path = _glob(exception.path)
        self.destination = AddressRanges([exception.destination]) if exception.destination else None
        self.expires_ns = exception.expires_ns

    def applies(self, hit: Hit, event: common_pb2.Event, workload: common_pb2.Workload, now_ns: int) -> bool:
        return (
            (self.expires_ns is None or now_ns < self.expires_ns)
            and (self.application is None or self.application == workload.application)
            and (self.component is None or self.component == workload.component)
            and (self.binary is None or self.binary(event.process.exe) is not None)
            and (self.path is None or self.path(hit.path) is not None)
            and (self.destination is None or hit.destination in self.destination)
        )


class _Rule:
    """An enabled rule prepared for evaluation."""

    __slots__ = ("action", "alert_type", "category", "check", "exceptions", "priority", "title")

    def __init__(self, spec: AlertTypeSpec, rule: Rule, check: Check) -> None:
        self.alert_type = spec.id
        self.category = spec.category
        self.title = spec.title
        self.priority = rule.priority
        self.action = rule.action
        self.check = check
        self.exceptions = tuple(_Exception(e) for e in rule.exceptions)


def _who(workload: common_pb2.Workload) -> str:
    if workload.application:
        return f"{workload.application}/{workload.component}" if workload.component else workload.application
    return f"workload {workload.id}" if workload.id else "an unnamed workload"


class CompiledPolicy:
    """A policy prepared for fast evaluation. Immutable; safe to share."""

    __slots__ = ("_by_kind", "policy")

    def __init__(self, policy: Policy, by_kind: dict[int, tuple[_Rule, ...]]) -> None:
        """Use :meth:`compile`."""
        self.policy = policy
        self._by_kind = by_kind  # a plain dict: the lookup is on the hot path

    @classmethod
    def compile(cls, policy: Policy) -> CompiledPolicy:
        """Prepare every enabled rule of ``policy`` (which must be valid, as every Policy built
        by this package is). Rules whose parameters can never match are left out."""
        by_kind: dict[int, list[_Rule]] = {}
        for type_id, rule in policy.rules.items():
            spec = CATALOG.get(type_id)
            if spec is None or not rule.enabled:
                continue
            check = CHECKS[type_id](rule.params)
            if check is None:
                continue
            compiled = _Rule(spec, rule, check)
            for kind in sorted(spec.event_kinds):
                by_kind.setdefault(kind, []).append(compiled)
        return cls(policy, {k: tuple(v) for k, v in by_kind.items()})

    @property
    def active_types(self) -> frozenset[str]:
        """The alert types that can fire under this policy."""
        return frozenset(rule.alert_type for rules in self._by_kind.values() for rule in rules)

    def evaluate(self, event: common_pb2.Event, workload: common_pb2.Workload, now_ns: int) -> list[Finding]:
        """Return the findings ``event`` of ``workload`` raises under this policy (often none).

        An exception applies while ``now_ns`` is before its expiry. A finding's time is the
        event's time, or ``now_ns`` when the event has none; its count is the event's count.
        """
        rules = self._by_kind.get(event.kind)
        if rules is None:
            return []
        found: list[Finding] = []
        for rule in rules:
            hit = rule.check(event)
            if hit is None:
                continue
            if rule.exceptions and any(e.applies(hit, event, workload, now_ns) for e in rule.exceptions):
                continue
            found.append(self._finding(rule, hit, event, workload, now_ns))
        return found

    def _finding(
        self, rule: _Rule, hit: Hit, event: common_pb2.Event, workload: common_pb2.Workload, now_ns: int
    ) -> Finding:
        application = workload.application
        component = workload.component
        if event.HasField("time"):
            time = event.time
            time_ns = time.seconds * _NS + time.nanos
        else:
            time_ns = now_ns
        policy = self.policy
        # Positional construction: markedly cheaper than keywords on this hot path.
        return Finding(
            fingerprint(rule.alert_type, application, component, hit.subject),
            rule.alert_type,
            rule.category,
            rule.priority,
            rule.action,
            rule.title,
            f"{_who(workload)} {hit.text}",
            hit.subject,
            application,
            component,
            policy.name,
            policy.revision,
            event.count or 1,
            time_ns,
            time_ns,
        )


class PolicySet:
    """The policies in force, the default, and the assignments; picks each workload's policy.

    Immutable: build a new set (see :meth:`updated`) when anything changes. Compiled policies
    are cached per set.
    """

    __slots__ = ("_compiled", "assignments", "default", "policies")

    def __init__(
        self,
        policies: Mapping[str, Policy],
        default: str,
        assignments: Mapping[tuple[str, str], str],
    ) -> None:
        """``assignments`` maps (application, component) to a policy name; component "" stands
        for the whole application. Raises ValueError when ``default`` is not one of ``policies``."""
        if default not in policies:
            raise ValueError(f"default policy {default!r} is not among the policies")
        self.policies: Mapping[str, Policy] = MappingProxyType(dict(policies))
        self.default = default
        self.assignments: Mapping[tuple[str, str], str] = MappingProxyType(dict(assignments))
        self._compiled: dict[str, CompiledPolicy] = {}

    def name_for(self, workload: common_pb2.Workload) -> str:
        """The name of the policy that applies to ``workload``.

        In order: the workload's ``policy_override`` if it names a known policy, the assignment
        of its (application, component), the assignment of its application, the default. An
        assignment naming an unknown policy is skipped.
        """
        policies = self.policies
        if workload.policy_override in policies:
            return workload.policy_override
        assignments = self.assignments
        if workload.component:
            name = assignments.get((workload.application, workload.component))
            if name is not None and name in policies:
                return name
        name = assignments.get((workload.application, ""))
        if name is not None and name in policies:
            return name
        return self.default

    def policy_for(self, workload: common_pb2.Workload) -> CompiledPolicy:
        """The compiled policy that applies to ``workload`` (see :meth:`name_for`)."""
        name = self.name_for(workload)
        compiled = self._compiled.get(name)
        if compiled is None:
            compiled = self._compiled[name] = CompiledPolicy.compile(self.policies[name])
        return compiled

    def updated(
        self,
        *,
        policies: Mapping[str, Policy] | None = None,
        default: str | None = None,
        assignments: Mapping[tuple[str, str], str] | None = None,
    ) -> PolicySet:
        """A new set with the given parts replaced, reusing compiled policies that did not change."""
        new = PolicySet(
            self.policies if policies is None else policies,
            self.default if default is None else default,
            self.assignments if assignments is None else assignments,
        )
        for name, compiled in self._compiled.items():
            policy = new.policies.get(name)
            if policy is not None and (policy is compiled.policy or policy == compiled.policy):
                new._compiled[name] = compiled
        return new
