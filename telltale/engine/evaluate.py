"""Evaluation: events of a workload, and host state of a node, against a policy, giving findings.

:class:`CompiledPolicy` prepares every enabled rule once (checks, globs, network ranges) and
hands each event only to the rules that look at its kind; :func:`evaluate_node_state` runs the
rules of host-state types on a node's state report. :class:`PolicySet` picks the policy of a
workload and keeps the compiled form of each policy. Nothing here reads a clock or does I/O:
the caller passes ``now_ns``, which decides whether an exception has expired, and the country
lookup is an in-memory object fixed at compile time.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from hashlib import blake2b
from types import MappingProxyType
from typing import NamedTuple

from telltale.engine.assignment import policy_name_for
from telltale.engine.catalog import CATALOG, AlertTypeSpec
from telltale.engine.checkbase import globs
from telltale.engine.checks import CHECKS, NODE_CHECKS, Check, Context, Hit, NodeCheck
from telltale.engine.countries import NO_COUNTRIES, CountryLookup
from telltale.engine.facts import EXTRACTORS, Extractor
from telltale.engine.model import Action, Policy, Priority, Rule, RuleException
from telltale.engine.netranges import AddressRanges
from telltale.v1 import agent_pb2, common_pb2

__all__ = ["CompiledPolicy", "Finding", "PolicySet", "evaluate_node_state", "fingerprint"]

_NS = 1_000_000_000
_new = tuple.__new__


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
def fingerprint(alert_type: str, application: str, component: str, subject: str, node: str = "") -> str:
    """The stable identity of a finding: 32 hex digits over type, application, component, subject.

    For workload findings the node and the process are deliberately left out (``node`` empty),
    so the same behaviour of an application on many nodes is one alert. Findings on host state
    are per host: they pass their ``node``, which then takes part in the digest.
    """
    parts = (
        (alert_type, application, component, subject, node)
        if node
        else (alert_type, application, component, subject)
    )
    data = "\x1f".join(parts).encode("utf-8", "surrogatepass")
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

    def applies(self, hit: Hit, binary: str, application: str, component: str, now_ns: int) -> bool:
        return (
            (self.expires_ns is None or now_ns < self.expires_ns)
            and (self.application is None or self.application == application)
            and (self.component is None or self.component == component)
            and (self.binary is None or self.binary(binary) is not None)
            and (self.path is None or self.path(hit.path) is not None)
            and (self.destination is None or hit.destination in self.destination)
        )


class _Rule:
    """An enabled rule of an event type, prepared for evaluation."""

    __slots__ = ("action", "alert_type", "category", "check", "exceptions", "priority", "title")

    def __init__(self, spec: AlertTypeSpec, rule: Rule, check: Check) -> None:
        self.alert_type = spec.id
        self.category = spec.category
        self.title = spec.title
        self.priority = rule.priority
        self.action = rule.action
        self.check = check
        self.exceptions = tuple(_Exception(e) for e in rule.exceptions)


class _NodeRule:
    """An enabled rule of a host-state type, prepared for evaluation."""

    __slots__ = (
        "action",
        "alert_type",
        "category",
        "check",
        "exceptions",
        "ignore_node",
        "priority",
        "title",
    )

    def __init__(self, spec: AlertTypeSpec, rule: Rule, check: NodeCheck) -> None:
        self.alert_type = spec.id
        self.category = spec.category
        self.title = spec.title
        self.priority = rule.priority
        self.action = rule.action
        self.check = check
        self.exceptions = tuple(_Exception(e) for e in rule.exceptions)
        ignore_nodes = rule.params.get("ignore_nodes", ())
        assert isinstance(ignore_nodes, tuple)
        self.ignore_node = globs(str(n) for n in ignore_nodes)


def _who(application: str, component: str, workload: common_pb2.Workload) -> str:
    if application:
        return f"{application}/{component}" if component else application
    return f"workload {workload.id}" if workload.id else "an unnamed workload"


_KindRules = tuple[Extractor | None, tuple[tuple[Check, _Rule], ...]]
"""The facts extractor of an event kind and the (check, rule) pairs of the rules that look at it."""


class CompiledPolicy:
    """A policy prepared for fast evaluation. Immutable; safe to share."""

    __slots__ = ("_by_kind", "_node_rules", "_rules_for", "countries", "policy")

    def __init__(
        self,
        policy: Policy,
        by_kind: dict[int, _KindRules],
        node_rules: tuple[_NodeRule, ...],
        countries: CountryLookup,
    ) -> None:
        """Use :meth:`compile`."""
        self.policy = policy
        self.countries = countries
        self._by_kind = by_kind
        self._rules_for = by_kind.get  # bound once: the lookup is on the hot path
        self._node_rules = node_rules

    @classmethod
    def compile(cls, policy: Policy, *, countries: CountryLookup = NO_COUNTRIES) -> CompiledPolicy:
        """Prepare every enabled rule of ``policy`` (which must be valid, as every Policy built
        by this package is). Rules whose parameters can never match are left out.

        ``countries`` places destination addresses in countries for the restricted-country
        rule; with the default, which knows no country, that rule never fires.
        """
        context = Context(countries=countries)
        by_kind: dict[int, list[_Rule]] = {}
        node_rules: list[_NodeRule] = []
        for type_id, rule in policy.rules.items():
            spec = CATALOG.get(type_id)
            if spec is None or not rule.enabled:
                continue
            if spec.node_state:
                node_check = NODE_CHECKS[type_id](rule.params, context)
                if node_check is not None:
                    node_rules.append(_NodeRule(spec, rule, node_check))
                continue
            check = CHECKS[type_id](rule.params, context)
            if check is None:
                continue
            compiled = _Rule(spec, rule, check)
            for kind in sorted(spec.event_kinds):
                by_kind.setdefault(kind, []).append(compiled)
        prepared = {
            kind: (EXTRACTORS.get(kind), tuple((rule.check, rule) for rule in rules))
            for kind, rules in by_kind.items()
        }
        return cls(policy, prepared, tuple(node_rules), countries)

    @property
    def active_types(self) -> frozenset[str]:
        """The alert types that can fire under this policy."""
        events = {rule.alert_type for _, rules in self._by_kind.values() for _, rule in rules}
        return frozenset(events) | {rule.alert_type for rule in self._node_rules}

    def evaluate(self, event: common_pb2.Event, workload: common_pb2.Workload, now_ns: int) -> list[Finding]:
        """Return the findings ``event`` of ``workload`` raises under this policy (often none).

        An exception applies while ``now_ns`` is before its expiry. A finding's time is the
        event's time, or ``now_ns`` when the event has none; its count is the event's count.
        """
        kind = event.kind
        prepared = self._rules_for(kind)
        if prepared is None:
            return []
        extract, rules = prepared
        if extract is None:
            facts: object = event
        else:
            facts = extract(event, kind)  # each field read once per event
            if facts is None:
                return []  # no check needs this event (a fork child's start)
        found: list[Finding] | None = None
        for check, rule in rules:
            hit = check(facts)
            if hit is None:
                continue
            if rule.exceptions and any(
                e.applies(hit, event.process.exe, workload.application, workload.component, now_ns)
                for e in rule.exceptions
            ):
                continue
            if found is None:
                found = []
            found.append(self._finding(rule, hit, event, workload, now_ns))
        return [] if found is None else found

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
        who = _who(application, component, workload)
        policy = self.policy
        # Positional construction without NamedTuple's argument handling: this is a hot path.
        return _new(
            Finding,
            (
                fingerprint(rule.alert_type, application, component, hit.subject),
                rule.alert_type,
                rule.category,
                rule.priority,
                rule.action,
                rule.title,
                f"{who} {hit.text}",
                hit.subject,
                application,
                component,
                policy.name,
                policy.revision,
                event.count or 1,
                time_ns,
                time_ns,
            ),
        )

    def evaluate_node_state(self, state: agent_pb2.NodeState, node_id: str, now_ns: int) -> list[Finding]:
        """See :func:`evaluate_node_state`."""
        if not self._node_rules:
            return []
        time_ns = state.time.seconds * _NS + state.time.nanos if state.HasField("time") else now_ns
        policy = self.policy
        found: list[Finding] = []
        for rule in self._node_rules:
            if rule.ignore_node is not None and rule.ignore_node(node_id):
                continue
            for hit in rule.check(state):
                if rule.exceptions and any(
                    e.applies(hit, hit.binary, "", "", now_ns) for e in rule.exceptions
                ):
                    continue
                found.append(
                    Finding(
                        fingerprint=fingerprint(rule.alert_type, "", "", hit.subject, node_id),
                        alert_type=rule.alert_type,
                        category=rule.category,
                        priority=rule.priority,
                        action=rule.action,
                        title=rule.title,
                        summary=f"node {node_id} {hit.text}",
                        subject=hit.subject,
                        application="",
                        component="",
                        policy=policy.name,
                        policy_revision=policy.revision,
                        count=1,
                        time_ns=time_ns,
                        last_time_ns=time_ns,
                    )
                )
        return found


def evaluate_node_state(
    policy: CompiledPolicy, state: agent_pb2.NodeState, node_id: str, now_ns: int
) -> list[Finding]:
    """Return the findings the host state ``state`` of node ``node_id`` raises under ``policy``.

    Only the rules of host-state alert types run (``AlertTypeSpec.node_state``); the event
    types about how workloads run on the node (root, capabilities, secrets in the environment)
    are judged by :meth:`CompiledPolicy.evaluate`. Findings have an empty application and
    component, the node in their summary, a fingerprint that includes ``node_id`` (host state
    is per host), count 1, and the state's time (``now_ns`` when it has none). A partial report
    (``state.full`` false) is judged on what it carries: absent settings, interfaces or
    listeners raise nothing. Rules skip nodes matching their ``ignore_nodes`` parameter; an
    exception applies on its ``binary`` (the listening program) and ``destination`` (the
    exposed address) fields, and never on ``application`` or ``component``.
    """
    return policy.evaluate_node_state(state, node_id, now_ns)


class PolicySet:
    """The policies in force, the default, and the assignments; picks each workload's policy.

    Immutable: build a new set (see :meth:`updated`) when anything changes. Compiled policies
    are cached per set.
    """

    __slots__ = ("_compiled", "assignments", "countries", "default", "policies")

    def __init__(
        self,
        policies: Mapping[str, Policy],
        default: str,
        assignments: Mapping[tuple[str, str], str],
        *,
        countries: CountryLookup = NO_COUNTRIES,
    ) -> None:
        """``assignments`` maps (application, component) to a policy name; component "" stands
        for the whole application. ``countries`` is handed to every policy compiled for the set
        (see :meth:`CompiledPolicy.compile`). Raises ValueError when ``default`` is not one of
        ``policies``."""
        if default not in policies:
            raise ValueError(f"default policy {default!r} is not among the policies")
        self.countries = countries
        self.policies: Mapping[str, Policy] = MappingProxyType(dict(policies))
        self.default = default
        self.assignments: Mapping[tuple[str, str], str] = MappingProxyType(dict(assignments))
        self._compiled: dict[str, CompiledPolicy] = {}

    def name_for(self, workload: common_pb2.Workload) -> str:
        """The name of the policy that applies to ``workload`` (see
        :func:`telltale.engine.assignment.policy_name_for`)."""
        return policy_name_for(workload, self.policies, self.default, self.assignments)

    def policy_for(self, workload: common_pb2.Workload) -> CompiledPolicy:
        """The compiled policy that applies to ``workload`` (see :meth:`name_for`)."""
        return self.compiled(self.name_for(workload))

    def compiled(self, name: str) -> CompiledPolicy:
        """The compiled form of policy ``name`` (KeyError when the set has no such policy).

        ``compiled(default)`` is the policy to judge host state by, unless the caller picks
        another.
        """
        compiled = self._compiled.get(name)
        if compiled is None:
            compiled = self._compiled[name] = CompiledPolicy.compile(
                self.policies[name], countries=self.countries
            )
        return compiled

    def updated(
        self,
        *,
        policies: Mapping[str, Policy] | None = None,
        default: str | None = None,
        assignments: Mapping[tuple[str, str], str] | None = None,
    ) -> PolicySet:
        """A new set with the given parts replaced (the country lookup is kept), reusing compiled
        policies that did not change."""
        new = PolicySet(
            self.policies if policies is None else policies,
            self.default if default is None else default,
            self.assignments if assignments is None else assignments,
            countries=self.countries,
        )
        for name, compiled in self._compiled.items():
            policy = new.policies.get(name)
            if policy is not None and (policy is compiled.policy or policy == compiled.policy):
                new._compiled[name] = compiled
        return new
