"""The controller's view of policy state: loaded from the store, kept current by a watch.

Every replica holds one PolicyView. It compiles the policies with the engine and tells the agent
streams it serves when the policy-state revision changes, whichever replica made the change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable

from telltale.controller.store import PolicyState, Store
from telltale.engine import policy as policy_model
from telltale.engine.countries import NO_COUNTRIES, CountryLookup
from telltale.engine.enforcement import block_plan
from telltale.engine.evaluate import PolicySet
from telltale.v1 import agent_pb2, policy_pb2

log = logging.getLogger(__name__)

FOLLOW_BACKOFF_MIN_S = 0.2
FOLLOW_BACKOFF_MAX_S = 10.0
MAX_PLAN_NETWORKS = 100_000  # per policy: what one agent's firewall holds at most


class PolicyView:
    """Current policy state and its compiled form; `changed` is notified on every new revision."""

    def __init__(self, store: Store, *, countries: CountryLookup = NO_COUNTRIES) -> None:
        self._store = store
        self._countries = countries
        self.state = PolicyState({}, "", {}, 0)
        self._policy_set: PolicySet | None = None
        self._update: agent_pb2.ConnectResponse | None = None
        self._update_bytes = b""
        self._subscribers: set[Callable[[], None]] = set()
        self.changed = asyncio.Condition()

    @property
    def revision(self) -> int:
        """The policy-state revision in force."""
        return self.state.revision

    @property
    def policy_set(self) -> PolicySet:
        """The compiled policies; only after the first successful load()."""
        if self._policy_set is None:
            raise RuntimeError("policy state not loaded yet")
        return self._policy_set

    async def load(self) -> None:
        """Read the whole policy state and recompile it.

        A state the engine refuses (a stored policy that no longer validates, a default that names
        no policy) is logged and the previous state stays in force; raises ValueError if there is none.
        """
        state = await self._store.policy_state()
        try:
            policies = {name: policy_model.from_proto(pb) for name, pb in state.policies.items()}
            policy_set = PolicySet(
                policies, state.default_policy, state.assignments, countries=self._countries
            )
        except (ValueError, policy_model.PolicyValidationError) as exc:
            if self._policy_set is None:
                raise ValueError(f"unusable policy state at revision {state.revision}: {exc}") from exc
            log.error("ignoring unusable policy state at revision %d: %s", state.revision, exc)
            return
        # Block plans can read a whole country database through the first time: not on the loop.
        enforcement = await asyncio.to_thread(_enforcement, policies, self._countries, time.time_ns())
        self._policy_set = policy_set
        self.state = state
        # One message for every agent stream: built and copied once per revision, not per agent.
        self._update = agent_pb2.ConnectResponse(policy_update=_update_message(state, enforcement))
        self._update_bytes = self._update.SerializeToString()
        for subscriber in list(self._subscribers):
            try:
                subscriber()
            except Exception:
                log.exception("a policy-change subscriber failed")
        async with self.changed:
            self.changed.notify_all()
        log.info(
            "policy state at revision %d: %d policies, default %r",
            state.revision,
            len(state.policies),
            state.default_policy,
            extra={"policy_revision": state.revision, "default_policy": state.default_policy},
        )

    async def follow(self) -> None:
        """Watch the store and reload on each change, forever.

        When the store cannot be reached the watch is re-established with capped, jittered
        backoff, reloading first so that changes made meanwhile are not missed; the last good
        state stays in force until then.
        """
        delay = FOLLOW_BACKOFF_MIN_S
        while True:
            try:
                async for revision in self._store.watch_policy_state(self.state.revision):
                    delay = FOLLOW_BACKOFF_MIN_S
                    if revision > self.state.revision:
                        await self.load()
                await self.load()  # the watch ended without an error: resynchronise and watch again
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("policy watch failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, FOLLOW_BACKOFF_MAX_S)
                with contextlib.suppress(Exception):
                    await self.load()

    def subscribe(self, notify: Callable[[], None]) -> None:
        """Call `notify()` (on the event loop, synchronously: it must not block) after every new
        revision is in force, until unsubscribe(notify)."""
        self._subscribers.add(notify)

    def unsubscribe(self, notify: Callable[[], None]) -> None:
        """Stop notifying `notify`; no error if it was not subscribed."""
        self._subscribers.discard(notify)

    def update_bytes(self) -> bytes:
        """The update response serialized, once per revision (what agent streams write)."""
        if self._update is None:
            raise RuntimeError("policy state not loaded yet")
        return self._update_bytes

    def update_message(self) -> agent_pb2.PolicyUpdate:
        """The PolicyUpdate agents receive for the current state (one shared message: do not modify)."""
        return self.update_response().policy_update

    def update_response(self) -> agent_pb2.ConnectResponse:
        """The update as the message written to every agent stream (shared: do not modify)."""
        if self._update is None:
            raise RuntimeError("policy state not loaded yet")
        return self._update


def _enforcement(
    policies: dict[str, policy_model.Policy], countries: CountryLookup, now_ns: int
) -> list[agent_pb2.PolicyEnforcement]:
    """The block plan of every policy that has one, each at most MAX_PLAN_NETWORKS networks.

    A plan that cannot be made (a country database that fails while being read through) becomes
    a note in the plan rather than a reason to refuse the whole policy state.
    """
    plans = []
    for name in sorted(policies):
        try:
            plan = block_plan(policies[name], countries, now_ns)
        except Exception as exc:
            log.exception("block plan of policy %r failed", name)
            plans.append(agent_pb2.PolicyEnforcement(policy=name, unenforced=[f"no block plan: {exc}"]))
            continue
        networks, notes = plan.networks, list(plan.unenforced)
        if len(networks) > MAX_PLAN_NETWORKS:
            notes.append(
                f"{len(networks) - MAX_PLAN_NETWORKS} of {len(networks)} networks over the limit of "
                f"{MAX_PLAN_NETWORKS} are not blocked"
            )
            networks = networks[:MAX_PLAN_NETWORKS]
        if networks or notes:
            plans.append(agent_pb2.PolicyEnforcement(policy=name, networks=networks, unenforced=notes))
    return plans


def _update_message(
    state: PolicyState, enforcement: list[agent_pb2.PolicyEnforcement]
) -> agent_pb2.PolicyUpdate:
    return agent_pb2.PolicyUpdate(
        revision=state.revision,
        policies=[state.policies[name] for name in sorted(state.policies)],
        default_policy=state.default_policy,
        assignments=[
            policy_pb2.PolicyAssignment(application=app, component=comp, policy=name)
            for (app, comp), name in sorted(state.assignments.items())
        ],
        enforcement=enforcement,
    )
