"""Which policy applies to a workload: one rule, shared by the controller's evaluation and the
agent's enforcement, so both always pick the same policy."""

from __future__ import annotations

from collections.abc import Container, Mapping

from telltale.v1 import common_pb2

__all__ = ["policy_name_for"]


def policy_name_for(
    workload: common_pb2.Workload,
    policies: Container[str],
    default: str,
    assignments: Mapping[tuple[str, str], str],
) -> str:
    """The name of the policy that applies to ``workload``.

    In order: the workload's ``policy_override`` if it names one of ``policies``, the assignment
    of its (application, component), the assignment of its application (component ""), then
    ``default``. An assignment naming an unknown policy is skipped.
    """
    if workload.policy_override in policies:
        return workload.policy_override
    if workload.component:
        name = assignments.get((workload.application, workload.component))
        if name is not None and name in policies:
            return name
    name = assignments.get((workload.application, ""))
    if name is not None and name in policies:
        return name
    return default
