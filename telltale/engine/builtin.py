"""The built-in policies shipped with telltale as YAML documents in ``telltale.policies``."""

from __future__ import annotations

from importlib.resources import files

from telltale.engine.errors import PolicyValidationError
from telltale.engine.model import Policy
from telltale.engine.policy import parse_document

__all__ = ["DEFAULT_POLICY", "load_builtin_policies"]

DEFAULT_POLICY = "Standard"
"""The policy for applications with no assignment, until an operator picks another."""

_PACKAGE = "telltale.policies"


def load_builtin_policies() -> dict[str, Policy]:
    """Read and validate every ``*.yaml`` document of ``telltale.policies``, by policy name.

    The policies are marked ``builtin``. Raises PolicyValidationError (with a note naming the
    file) if a document is invalid, and ValueError if two documents share a name: both are
    defects of the installed package, not conditions to handle.
    """
    policies: dict[str, Policy] = {}
    sources: dict[str, str] = {}
    for entry in sorted(files(_PACKAGE).iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".yaml") or not entry.is_file():
            continue
        try:
            policy = parse_document(entry.read_text(encoding="utf-8"), builtin=True)
        except PolicyValidationError as exc:
            exc.add_note(f"in built-in policy document {_PACKAGE}/{entry.name}")
            raise
        if policy.name in policies:
            raise ValueError(
                f"built-in policy name {policy.name!r} used by both {sources[policy.name]} and {entry.name}"
            )
        policies[policy.name] = policy
        sources[policy.name] = entry.name
    return policies
