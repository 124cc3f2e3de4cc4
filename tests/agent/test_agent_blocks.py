"""The networks a node refuses: block plans of the default policy and of its workloads' policies."""

from __future__ import annotations

from telltale.nodeagent.blocks import MAX_REMEMBERED_WORKLOADS, SeenWorkloads, node_blocks
from telltale.v1 import agent_pb2, common_pb2, policy_pb2


def update(**plans: list[str]) -> agent_pb2.PolicyUpdate:
    names = ["Standard", "Fence", "Moat", "Wall"]
    return agent_pb2.PolicyUpdate(
        revision=7,
        policies=[policy_pb2.Policy(name=n) for n in names],
        default_policy="Standard",
        assignments=[
            policy_pb2.PolicyAssignment(application="shop", policy="Fence"),
            policy_pb2.PolicyAssignment(application="shop", component="db", policy="Moat"),
        ],
        enforcement=[
            agent_pb2.PolicyEnforcement(policy=name, networks=networks, unenforced=[f"{name} note"])
            for name, networks in plans.items()
        ],
    )


def test_the_default_policy_blocks_even_with_no_workload() -> None:
    """The default policy's blocks apply to the node itself; others only once a workload uses them."""
    blocks = node_blocks(update(Standard=["10.0.0.0/8"], Fence=["192.0.2.0/24"]), [])
    assert blocks.networks == ("10.0.0.0/8",)
    assert blocks.policies == ("Standard",)
    assert blocks.unenforced == ("policy Standard: Standard note",)


def test_workloads_bring_their_policies_blocks_merged() -> None:
    """Assignments by component, application and override pick the policies; networks merge."""
    plans = update(
        Standard=["192.0.2.0/25"], Fence=["192.0.2.128/25"], Moat=["2001:db8::/32"], Wall=["198.51.100.7"]
    )
    blocks = node_blocks(plans, [("shop", "web", ""), ("shop", "db", ""), ("other", "", "Wall")])
    assert blocks.networks == ("192.0.2.0/24", "198.51.100.7/32", "2001:db8::/32")
    assert set(blocks.policies) == {"Standard", "Fence", "Moat", "Wall"}


def test_invalid_networks_from_the_wire_are_skipped() -> None:
    """A network the agent cannot parse is ignored rather than failing the whole update."""
    assert node_blocks(update(Standard=["nonsense", "10.1.0.0/16"]), []).networks == ("10.1.0.0/16",)


def test_seen_workloads_say_when_one_is_new_and_stay_bounded() -> None:
    """A workload already seen is not new; the oldest are forgotten beyond the bound."""
    seen = SeenWorkloads()
    shop = common_pb2.Workload(id="w1", application="shop")
    assert seen.add_all([shop])
    assert not seen.add_all([common_pb2.Workload(id="w2", application="shop")])
    for i in range(MAX_REMEMBERED_WORKLOADS):
        seen.add_all([common_pb2.Workload(application=f"app-{i}")])
    assert len(seen.keys) == MAX_REMEMBERED_WORKLOADS
    assert ("shop", "", "") not in seen.keys
