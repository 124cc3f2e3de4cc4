"""The duties that must run once in a cluster of replicas, on the replica that holds the election
(membership.py): seeding the built-in policies, marking nodes offline when their liveness lapses,
and alert retention.

Every write here is a compare-and-swap, so a leader that has just lost the election (and not yet
noticed) cannot undo what a stream or the new leader wrote. The writes do not yet also compare the
leader key (``mod_revision(election/leader) == the revision held``): the store's methods
(expire_node, delete_alerts, seed_policies) take no extra compare, and membership.py stops the
duties once the lease has gone unrefreshed for TTL x 2/3, before etcd could expire it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from telltale.controller.store import MAX_BATCH_ALERTS, Store, Versioned
from telltale.v1 import alert_pb2, inventory_pb2

log = logging.getLogger(__name__)

DAY_S = 86_400
DEFAULT_CLOSED_AGE_S = 30 * DAY_S
DEFAULT_MAX_ALERTS = 100_000
RETENTION_INTERVAL_S = 60.0
CLOSED_STATES = frozenset({alert_pb2.ALERT_STATE_NOT_AN_ISSUE, alert_pb2.ALERT_STATE_ACKNOWLEDGED})
"""Triaged alerts: once their behaviour has not been seen for the closed age, retention removes
them. Open and suppressed alerts never age out; only the cap on the count removes them."""

Seed = Callable[[], Awaitable[list[str]]]
Clock = Callable[[], int]


@dataclass(frozen=True)
class Retention:
    """How long closed alerts are kept, and how many alerts at most."""

    closed_age_s: float = DEFAULT_CLOSED_AGE_S
    max_alerts: int = DEFAULT_MAX_ALERTS
    interval_s: float = RETENTION_INTERVAL_S


def is_closed(alert: alert_pb2.Alert) -> bool:
    return alert.state in CLOSED_STATES


def retention_victims(
    alerts: list[Versioned[alert_pb2.Alert]], retention: Retention, now_ns: int
) -> list[Versioned[alert_pb2.Alert]]:
    """The alerts retention removes: closed ones last seen before the closed age, then, while more
    than `max_alerts` remain, the oldest by last seen, closed ones first."""
    cutoff = now_ns - int(retention.closed_age_s * 1e9)
    victims = [a for a in alerts if is_closed(a.value) and a.value.last_seen.ToNanoseconds() < cutoff]
    excess = len(alerts) - len(victims) - retention.max_alerts
    if excess > 0:
        gone = {a.value.fingerprint for a in victims}
        rest = sorted(
            (a for a in alerts if a.value.fingerprint not in gone),
            key=lambda a: (not is_closed(a.value), a.value.last_seen.ToNanoseconds(), a.value.fingerprint),
        )
        victims.extend(rest[:excess])
    return victims


class SingletonDuties:
    """What the elected replica does; run() is the whole term of office."""

    def __init__(
        self,
        store: Store,
        seed: Seed,
        *,
        retention: Retention = Retention(),
        node_sweep_s: float = 10.0,
        clock: Clock = time.time_ns,
    ) -> None:
        self._store = store
        self._seed = seed
        self.retention = retention
        self._node_sweep_s = node_sweep_s
        self._clock = clock

    async def run(self) -> None:
        """Seed, then expire nodes and apply retention until cancelled. A failing pass is logged and
        tried again at the next interval; it never ends the term."""
        try:
            seeded = await self._seed()
            if seeded:
                log.info("seeded built-in policies: %s", ", ".join(seeded))
        except Exception as exc:
            log.warning("seeding the built-in policies failed (%s); the next leader tries again", exc)
        async with asyncio.TaskGroup() as group:
            group.create_task(self._expire_nodes_loop())
            group.create_task(self._retention_loop())

    # -- nodes -----------------------------------------------------------------------------
    async def expire_nodes(self) -> list[str]:
        """Mark offline every online node without a liveness key; the ids marked. A node whose
        record changed meanwhile (a stream re-registered it) is left alone."""
        records = await self._store.list_node_records()
        online = [r for r in records if r.value.liveness == inventory_pb2.NODE_LIVENESS_ONLINE]
        if not online:
            return []
        live = await self._store.live_nodes()
        expired = []
        for record in online:
            if record.value.node_id in live:
                continue
            node = inventory_pb2.Node()
            node.CopyFrom(record.value)
            node.liveness = inventory_pb2.NODE_LIVENESS_OFFLINE
            if await self._store.expire_node(node, record.mod_revision):
                expired.append(node.node_id)
                log.info("node %s is offline: its replica %s is gone", node.node_id, node.controller_id)
        return expired

    async def _expire_nodes_loop(self) -> None:
        poke = asyncio.Event()
        watcher = asyncio.create_task(self._watch_liveness(poke))
        try:
            while True:
                poke.clear()
                try:
                    await self.expire_nodes()
                except Exception as exc:
                    log.warning("marking lapsed nodes offline failed (%s)", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(poke.wait(), self._node_sweep_s)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher

    async def _watch_liveness(self, poke: asyncio.Event) -> None:
        """Set `poke` whenever a liveness key goes; re-watch after failures (the periodic sweep
        covers what a broken watch misses)."""
        while True:
            try:
                async for _ in self._store.watch_node_live():
                    poke.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("liveness watch failed (%s); watching again", exc)
            await asyncio.sleep(random.uniform(0.5, 1.0))
            poke.set()

    # -- alert retention -------------------------------------------------------------------
    async def enforce_retention(self) -> int:
        """Delete the alerts retention removes, at most MAX_BATCH_ALERTS per transaction; how many
        went (an alert updated meanwhile stays)."""
        alerts, _ = await self._store.list_alerts()
        victims = retention_victims(alerts, self.retention, self._clock())
        deleted = 0
        for start in range(0, len(victims), MAX_BATCH_ALERTS):
            chunk = victims[start : start + MAX_BATCH_ALERTS]
            deleted += await self._store.delete_alerts([(a.value.fingerprint, a.mod_revision) for a in chunk])
        if deleted:
            log.info("retention removed %d alerts", deleted)
        return deleted

    async def _retention_loop(self) -> None:
        while True:
            try:
                await self.enforce_retention()
            except Exception as exc:
                log.warning("alert retention failed (%s)", exc)
            await asyncio.sleep(self.retention.interval_s)
