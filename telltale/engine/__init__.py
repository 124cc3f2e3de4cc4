"""The pure policy engine: the alert catalog, policies, their evaluation, and alert deduplication.

No I/O and no clocks: events and policies go in, findings and alerts come out, and the caller
passes the current time. The controller drives it; the parts are:

- :mod:`~telltale.engine.catalog`: the alert types a policy configures;
- :mod:`~telltale.engine.policy`: the policy model, its YAML document and wire forms, validation;
- :mod:`~telltale.engine.evaluate`: compiled policies, findings, the choice of a workload's policy;
- :mod:`~telltale.engine.alerts`: findings folded into deduplicated alerts, alert filters;
- :mod:`~telltale.engine.builtin`: the built-in policies.

The wire conversions keep their module prefix, since both the catalog and policies have one:
``catalog.to_proto(spec)``, ``policy.to_proto(policy)``, ``policy.from_proto(message)``.
"""

from telltale.engine.alerts import alert_matches, coalesce, expire_suppression, merge
from telltale.engine.builtin import DEFAULT_POLICY, load_builtin_policies
from telltale.engine.catalog import CATALOG, AlertTypeSpec, ParamSpec
from telltale.engine.errors import PolicyValidationError, Violation
from telltale.engine.evaluate import CompiledPolicy, Finding, PolicySet, fingerprint
from telltale.engine.model import Policy, Rule, RuleException
from telltale.engine.policy import from_mapping, parse_document, to_document, validate

__all__ = [
    "CATALOG",
    "DEFAULT_POLICY",
    "AlertTypeSpec",
    "CompiledPolicy",
    "Finding",
    "ParamSpec",
    "Policy",
    "PolicySet",
    "PolicyValidationError",
    "Rule",
    "RuleException",
    "Violation",
    "alert_matches",
    "coalesce",
    "expire_suppression",
    "fingerprint",
    "from_mapping",
    "load_builtin_policies",
    "merge",
    "parse_document",
    "to_document",
    "validate",
]
