"""Which networks this node refuses: the block plans of the policies that concern the node.

The controller sends, with every policy update, the networks each policy's block rules refuse
(``PolicyUpdate.enforcement``). A firewall sees addresses, not processes, so a block applies to
the whole node: the node refuses what the default policy blocks (it judges the node itself), and
what the policy of every workload run on this node since the agent started blocks. Workloads
seen are remembered (up to a bound) rather than only the live ones, so that the firewall does not
change each time a short-lived workload starts and ends.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from telltale.engine.assignment import policy_name_for
from telltale.v1 import agent_pb2, common_pb2

MAX_REMEMBERED_WORKLOADS = 4096

WorkloadKey = tuple[str, str, str]  # application, component, policy override


@dataclass(frozen=True)
class NodeBlocks:
    """The networks to refuse (merged), the policies they come from, and what is not enforced."""

    networks: tuple[str, ...] = ()
    policies: tuple[str, ...] = ()
    unenforced: tuple[str, ...] = ()


def node_blocks(update: agent_pb2.PolicyUpdate, workloads: Iterable[WorkloadKey]) -> NodeBlocks:
    """What the node refuses under ``update``, given the workloads that ran on it."""
    names = {p.name for p in update.policies}
    assignments = {(a.application, a.component): a.policy for a in update.assignments}
    concerned = {update.default_policy} if update.default_policy else set()
    for application, component, override in workloads:
        workload = common_pb2.Workload(application=application, component=component, policy_override=override)
        concerned.add(policy_name_for(workload, names, update.default_policy, assignments))
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    notes: list[str] = []
    sources: list[str] = []
    for plan in update.enforcement:
        if plan.policy not in concerned:
            continue
        found = [ipaddress.ip_network(n, strict=False) for n in plan.networks if _valid(n)]
        if found:
            sources.append(plan.policy)
        networks.extend(found)
        notes.extend(f"policy {plan.policy}: {note}" for note in plan.unenforced)
    v4 = ipaddress.collapse_addresses(n for n in networks if isinstance(n, ipaddress.IPv4Network))
    v6 = ipaddress.collapse_addresses(n for n in networks if isinstance(n, ipaddress.IPv6Network))
    return NodeBlocks(tuple(str(n) for n in [*v4, *v6]), tuple(sources), tuple(notes))


def _valid(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


@dataclass
class SeenWorkloads:
    """The (application, component, policy override) of workloads run on this node, oldest first."""

    keys: dict[WorkloadKey, None] = field(default_factory=dict)

    def add_all(self, workloads: Iterable[common_pb2.Workload]) -> bool:
        """Remember these workloads; True when one was new. Beyond MAX_REMEMBERED_WORKLOADS the
        oldest are forgotten."""
        added = False
        for w in workloads:
            key = (w.application, w.component, w.policy_override)
            if key not in self.keys:
                self.keys[key] = None
                added = True
                if len(self.keys) > MAX_REMEMBERED_WORKLOADS:
                    del self.keys[next(iter(self.keys))]
        return added
