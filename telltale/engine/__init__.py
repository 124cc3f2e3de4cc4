"""The pure policy engine: the alert catalog, policies, their evaluation, and alert deduplication.

No I/O and no clocks: events and policies go in, findings and alerts come out, and the caller
passes the current time. The controller drives it; the parts are:

- :mod:`~telltale.engine.catalog`: the alert types a policy configures (declared per category
  in the ``catalog_*`` modules);
- :mod:`~telltale.engine.checks`: one check per alert type (in the ``checks_*`` modules), over
  the facts :mod:`~telltale.engine.facts` reads from each event once;
- :mod:`~telltale.engine.policy`: the policy model, its YAML document and wire forms, validation;
- :mod:`~telltale.engine.evaluate`: compiled policies, findings on events and on host state, the
  choice of a workload's policy;
- :mod:`~telltale.engine.countries`: the country lookup evaluation consults, and
  :mod:`~telltale.engine.geo`, its implementations (offline data, MaxMind database, override
  file), which read their data when built;
- :mod:`~telltale.engine.alerts`: findings folded into deduplicated alerts, alert filters;
- :mod:`~telltale.engine.builtin`: the built-in policies.

The wire conversions keep their module prefix, since both the catalog and policies have one:
``catalog.to_proto(spec)``, ``policy.to_proto(policy)``, ``policy.from_proto(message)``.
"""

from telltale.engine.alerts import alert_matches, coalesce, expire_suppression, merge
from telltale.engine.builtin import DEFAULT_POLICY, load_builtin_policies
from telltale.engine.catalog import CATALOG, AlertTypeSpec, ParamSpec
from telltale.engine.countries import NO_COUNTRIES, CountryLookup
from telltale.engine.errors import PolicyValidationError, Violation
from telltale.engine.evaluate import CompiledPolicy, Finding, PolicySet, evaluate_node_state, fingerprint
from telltale.engine.model import Policy, Rule, RuleException
from telltale.engine.policy import from_mapping, parse_document, to_document, validate

__all__ = [
    "CATALOG",
    "DEFAULT_POLICY",
    "NO_COUNTRIES",
    "AlertTypeSpec",
    "CompiledPolicy",
    "CountryLookup",
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
    "evaluate_node_state",
    "expire_suppression",
    "fingerprint",
    "from_mapping",
    "load_builtin_policies",
    "merge",
    "parse_document",
    "to_document",
    "validate",
]
