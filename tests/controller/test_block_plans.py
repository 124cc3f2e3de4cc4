"""Block plans in the policy updates agents receive: bounded, and a failure is a note, not an outage."""

from __future__ import annotations

import asyncio

import pytest

from telltale.controller import policies as policies_module
from telltale.controller.memstore import MemoryStore
from telltale.controller.policies import PolicyView
from telltale.engine import builtin
from telltale.engine import policy as policy_model

FENCE = """
apiVersion: telltale.dev/v1
kind: AlertPolicy
metadata:
  name: Fence
spec:
  rules:
    network.blocklisted_destination:
      action: block
      params:
        networks: [192.0.2.1, 192.0.2.3, 192.0.2.5]
"""


async def view_with_fence() -> PolicyView:
    store = MemoryStore()
    documents = [*builtin.load_builtin_policies().values(), policy_model.parse_document(FENCE)]
    await store.seed_policies([policy_model.to_proto(p) for p in documents], builtin.DEFAULT_POLICY)
    view = PolicyView(store)
    await view.load()
    return view


def test_a_plan_over_the_limit_is_cut_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """Beyond MAX_PLAN_NETWORKS, the first networks are kept and a note counts the rest."""
    monkeypatch.setattr(policies_module, "MAX_PLAN_NETWORKS", 2)
    (plan,) = asyncio.run(view_with_fence()).update_message().enforcement
    assert list(plan.networks) == ["192.0.2.1/32", "192.0.2.3/32"]
    assert any("1 of 3 networks" in note for note in plan.unenforced)


def test_a_plan_that_fails_is_a_note_and_the_policy_state_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """A block plan that raises (a damaged country database) leaves the other policies alone."""

    def broken(*args: object) -> object:
        raise RuntimeError("database damaged")

    monkeypatch.setattr(policies_module, "block_plan", broken)
    view = asyncio.run(view_with_fence())
    assert "Fence" in {p.name for p in view.update_message().policies}
    assert all("database damaged" in " ".join(p.unenforced) for p in view.update_message().enforcement)
