"""The enforcer: policy updates and workloads become firewall content, saved and reconciled."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import trio

from telltale.nodeagent.enforce import EnforcementResult, MemoryFirewall
from telltale.nodeagent.enforcer import Enforcer
from telltale.v1 import agent_pb2, common_pb2, policy_pb2

ACTIVE = common_pb2.ENFORCEMENT_MODE_ACTIVE


def update(revision: int, **plans: list[str]) -> agent_pb2.PolicyUpdate:
    return agent_pb2.PolicyUpdate(
        revision=revision,
        policies=[policy_pb2.Policy(name=n) for n in ("Standard", "Fence")],
        default_policy="Standard",
        assignments=[policy_pb2.PolicyAssignment(application="shop", policy="Fence")],
        enforcement=[agent_pb2.PolicyEnforcement(policy=p, networks=n) for p, n in plans.items()],
    )


def enforcer(firewall: MemoryFirewall | None, tmp_path: Path) -> Enforcer:
    mode = ACTIVE if firewall else common_pb2.ENFORCEMENT_MODE_OFF
    return Enforcer(firewall, tmp_path, mode=mode, reason="test")


def test_an_update_is_applied_reported_and_saved(tmp_path: Path) -> None:
    """The default policy's networks reach the firewall; the state says how many, from which revision."""
    firewall = MemoryFirewall()

    async def body() -> None:
        e = enforcer(firewall, tmp_path)
        assert await e.on_update(update(3, Standard=["192.0.2.0/24"], Fence=["198.51.100.0/24"])) == ""
        assert firewall.current() == ["192.0.2.0/24"]
        assert (e.state.mode, e.state.blocked_networks, e.state.policy_revision) == (ACTIVE, 1, 3)
        # The next agent applies what was saved before any controller is reached.
        fresh = MemoryFirewall()
        await enforcer(fresh, tmp_path).reconcile_saved()
        assert fresh.current() == ["192.0.2.0/24"]

    trio.run(body)


def test_a_workload_of_another_policy_widens_the_block_once(tmp_path: Path) -> None:
    """A workload whose policy blocks more re-applies; more workloads of the same kind do not."""
    firewall = MemoryFirewall()

    async def body() -> None:
        e = enforcer(firewall, tmp_path)
        await e.on_update(update(4, Standard=["192.0.2.0/24"], Fence=["198.51.100.0/24"]))
        await e.on_workloads([common_pb2.Workload(id="w1", application="shop")])
        assert firewall.current() == ["192.0.2.0/24", "198.51.100.0/24"]
        await e.on_workloads([common_pb2.Workload(id="w2", application="shop")])
        await e.on_workloads([common_pb2.Workload(id="w3", application="other")])  # default: same
        assert len(firewall.applied) == 2

    trio.run(body)


def test_a_failure_is_returned_and_reported_and_the_last_state_kept(tmp_path: Path) -> None:
    """A firewall that refuses makes on_update return why, and the state FAILED."""
    firewall = MemoryFirewall()

    async def body() -> None:
        e = enforcer(firewall, tmp_path)
        await e.on_update(update(5, Standard=["192.0.2.0/24"]))
        firewall.fail_with = "kernel says no"
        error = await e.on_update(update(6, Standard=["203.0.113.0/24"]))
        assert "kernel says no" in error
        assert e.state.mode == common_pb2.ENFORCEMENT_MODE_FAILED
        assert e.state.policy_revision == 5
        assert "kernel says no" in e.state.detail
        firewall.fail_with = None
        assert firewall.current() == ["192.0.2.0/24"]

    trio.run(body)


def test_without_a_firewall_updates_are_followed_and_nothing_applied(tmp_path: Path) -> None:
    """Enforcement off: updates succeed, the state keeps saying off and why."""

    async def body() -> None:
        e = enforcer(None, tmp_path)
        assert await e.on_update(update(7, Standard=["192.0.2.0/24"])) == ""
        await e.reconcile_saved()
        assert e.state.mode == common_pb2.ENFORCEMENT_MODE_OFF
        assert e.state.detail == "test"
        assert not (tmp_path / "enforcement.json").exists()

    trio.run(body)


def test_a_damaged_saved_file_is_ignored(tmp_path: Path) -> None:
    """A saved file that cannot be read leaves the firewall alone until the next update."""
    (tmp_path / "enforcement.json").write_text("{not json")
    firewall = MemoryFirewall()
    trio.run(enforcer(firewall, tmp_path).reconcile_saved)
    assert firewall.applied == []


def test_workloads_seen_before_a_restart_still_count_after_it(tmp_path: Path) -> None:
    """The next agent's first update keeps the blocks of workloads that ran before the restart."""
    plans = update(8, Standard=["192.0.2.0/24"], Fence=["198.51.100.0/24"])

    async def body() -> None:
        first = enforcer(MemoryFirewall(), tmp_path)
        await first.on_update(plans)
        await first.on_workloads([common_pb2.Workload(id="w1", application="shop")])
        fresh = MemoryFirewall()
        second = enforcer(fresh, tmp_path)
        await second.reconcile_saved()
        await second.on_update(plans)
        assert fresh.current() == ["192.0.2.0/24", "198.51.100.0/24"]

    trio.run(body)


class Exploding(MemoryFirewall):
    """A firewall whose library fails in a way nobody planned for."""

    def apply(self, networks: Sequence[str]) -> EnforcementResult:
        if self.fail_with is not None:
            raise RuntimeError(self.fail_with)
        return super().apply(networks)


def test_an_unexpected_firewall_error_is_reported_and_retried(tmp_path: Path) -> None:
    """Any exception from the firewall is a failed apply (the agent keeps running); a retry after
    the cause went away applies the latest update."""
    firewall = Exploding(fail_with="netlink said 105")

    async def body() -> None:
        e = enforcer(firewall, tmp_path)
        error = await e.on_update(update(9, Standard=["192.0.2.0/24"]))
        assert "netlink said 105" in error
        assert e.state.mode == common_pb2.ENFORCEMENT_MODE_FAILED
        await e.retry_failed()
        assert e.state.mode == common_pb2.ENFORCEMENT_MODE_FAILED
        firewall.fail_with = None
        await e.retry_failed()
        assert (e.state.mode, e.state.policy_revision) == (ACTIVE, 9)
        assert firewall.current() == ["192.0.2.0/24"]

    trio.run(body)
