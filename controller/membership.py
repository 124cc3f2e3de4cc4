"""A replica's place in the cluster: its registration on a lease, and the election for the duties
that must run once.

Each controller grants itself a lease (TTL ``--lease-ttl``) and keeps it alive at TTL/3 (aetcd
does not keep leases alive by itself). On that lease it keeps:

- ``controllers/<id>``: its ControllerRecord (id, listen address, version, start time);
- ``node-live/<node_id>``: one key per node whose stream it holds (NodeLiveness);
- ``election/leader``: its id, while it holds the election.

Campaigning is one transaction: create ``election/leader`` only if absent (create revision 0).
A replica that loses watches the key and campaigns again when it is deleted: a clean resign, or
the holder's lease expiring when the holder died. The holder runs the duties until it stops
being the holder: the key changes or goes, or its lease may have lapsed (no successful keepalive
for a whole TTL, during an etcd partition). A lease found expired is replaced by a new one, the
registration and liveness keys written again, and the replica campaigns anew.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any

import aetcd

from telltale.controller.store import Store
from telltale.v1 import inventory_pb2

log = logging.getLogger(__name__)

DEFAULT_LEASE_TTL_S = 10
RETRY_MIN_S = 0.1
RETRY_MAX_S = 2.0

Duties = Callable[[], Coroutine[Any, Any, None]]


class Membership:
    """One replica's lease, registration, liveness keys and campaign; also its NodeLiveness."""

    def __init__(
        self,
        client: aetcd.Client,
        prefix: str,
        store: Store,
        record: inventory_pb2.ControllerRecord,
        *,
        ttl: int = DEFAULT_LEASE_TTL_S,
    ) -> None:
        if ttl < 1:
            raise ValueError(f"the lease TTL must be at least 1 second, got {ttl}")
        self._client = client
        self._store = store
        self.record = record
        self.controller_id = record.controller_id
        self.ttl = ttl
        self._registration_key = f"{prefix}controllers/{record.controller_id}".encode()
        self._leader_key = f"{prefix}election/leader".encode()
        self.lease_id = 0
        self._held: set[str] = set()
        self._last_refresh = 0.0
        self._lease_changed = asyncio.Event()  # set when the lease was (or may have been) lost
        self._leader = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def is_leader(self) -> bool:
        """True while this replica holds the election and runs the duties."""
        return self._leader.is_set()

    async def wait_leader(self) -> None:
        """Return once this replica holds the election."""
        await self._leader.wait()

    # -- lease and registration ------------------------------------------------------------
    async def start(self, duties: Duties | None = None) -> None:
        """Grant the lease and register; then keep the lease alive and, with `duties`, campaign and
        run them while elected, in background tasks until close(). Raises aetcd.ClientError when
        etcd cannot be reached."""
        await self._register()
        self._tasks.append(asyncio.create_task(self._keep_alive(), name="lease-keepalive"))
        if duties is not None:
            self._tasks.append(asyncio.create_task(self._lead(duties), name="election"))

    async def _register(self) -> None:
        lease = int((await self._client.lease(self.ttl)).id)
        await self._client.put(self._registration_key, self.record.SerializeToString(), lease=lease)
        for node_id in sorted(self._held):
            await self._store.put_node_live(node_id, self.controller_id, lease)
        # Only now: if a write above failed, the keepalive still finds the old lease expired and
        # registers again.
        self.lease_id = lease
        self._last_refresh = time.monotonic()
        log.info(
            "controller %s registered with lease %x (ttl %ds)", self.controller_id, self.lease_id, self.ttl
        )

    async def _keep_alive(self) -> None:
        """Refresh the lease at TTL/3; replace it when etcd says it expired."""
        interval = self.ttl / 3
        while True:
            await asyncio.sleep(interval)
            try:
                reply = await asyncio.wait_for(self._client.refresh_lease(self.lease_id), interval)
                if reply is not None and reply.TTL > 0:
                    self._last_refresh = time.monotonic()
                    continue
                log.warning(
                    "controller %s: lease %x expired; registering again", self.controller_id, self.lease_id
                )
                self._lease_changed.set()  # stop leading now,
                await self._register()
                self._lease_changed.set()  # and campaign again on the new lease
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                overdue = time.monotonic() - self._last_refresh
                log.warning(
                    "controller %s: lease keepalive failed (%s), last refreshed %.1fs ago",
                    self.controller_id,
                    str(exc) or type(exc).__name__,
                    overdue,
                )
                if overdue >= self.ttl:
                    self._lease_changed.set()  # it may have lapsed: stop acting as the leader

    # -- NodeLiveness ----------------------------------------------------------------------
    async def node_connected(self, node_id: str) -> None:
        self._held.add(node_id)
        await self._store.put_node_live(node_id, self.controller_id, self.lease_id)

    async def node_disconnected(self, node_id: str) -> None:
        self._held.discard(node_id)
        await self._store.delete_node_live(node_id, self.controller_id)

    # -- the election ----------------------------------------------------------------------
    async def _lead(self, duties: Duties) -> None:
        """Campaign, run `duties` while elected, and campaign again, until cancelled."""
        delay = RETRY_MIN_S
        while True:
            try:
                self._lease_changed.clear()
                lease = self.lease_id
                revision = await self._campaign(lease)
                if revision:
                    delay = RETRY_MIN_S
                    await self._hold(revision, duties)
                else:
                    await self._await_vacancy()
                    delay = RETRY_MIN_S
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("controller %s: election: %s; retrying", self.controller_id, exc)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, RETRY_MAX_S)

    async def _campaign(self, lease: int) -> int:
        """Take the leader key if it is free (or already ours on this lease); the revision of the
        key as we hold it, or 0 when another replica holds it."""
        txn = self._client.transactions
        key = self._leader_key
        ok, responses = await self._client.transaction(
            compare=[txn.create(key) == 0],
            success=[txn.put(key, self.controller_id.encode(), lease=lease)],
            failure=[txn.get(key)],
        )
        if ok:
            return int(responses[0].response_put.header.revision)
        for value, kv in responses[0]:
            if value == self.controller_id.encode() and int(kv.lease) == lease:
                return int(kv.mod_revision)
        return 0

    async def _hold(self, revision: int, duties: Duties) -> None:
        """Run the duties until the leader key is no longer ours or the lease may have lapsed."""
        log.warning("controller %s leads: it runs the singleton duties", self.controller_id)
        watch = await self._client.watch(self._leader_key, start_revision=revision + 1)
        self._leader.set()

        async def key_lost() -> None:
            async for event in watch:
                if event.kind == "DELETE" or event.kv.value != self.controller_id.encode():
                    return

        tasks = [
            asyncio.create_task(duties(), name="duties"),
            asyncio.create_task(key_lost()),
            asyncio.create_task(self._lease_changed.wait()),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # a failed duty or watch: stop leading, campaign again after a pause
        finally:
            self._leader.clear()
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            with contextlib.suppress(Exception):
                await watch.cancel()
            log.warning("controller %s no longer leads", self.controller_id)

    async def _await_vacancy(self) -> None:
        """Return when the leader key is gone (or our lease changed, to campaign on the new one)."""
        current = await self._client.get(self._leader_key)
        if current is None:
            return
        watch = await self._client.watch(self._leader_key, start_revision=int(current.mod_revision) + 1)

        async def deleted() -> None:
            async for event in watch:
                if event.kind == "DELETE":
                    return

        tasks = [asyncio.create_task(deleted()), asyncio.create_task(self._lease_changed.wait())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            with contextlib.suppress(Exception):
                await watch.cancel()

    # -- shutdown --------------------------------------------------------------------------
    async def close(self) -> None:
        """Stop the duties, resign (delete the leader key if it is ours) and revoke the lease, which
        removes the registration and this replica's liveness keys. Errors are logged, not raised."""
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        txn = self._client.transactions
        try:
            await self._client.transaction(
                compare=[txn.value(self._leader_key) == self.controller_id.encode()],
                success=[txn.delete(self._leader_key)],
                failure=[],
            )
            await self._client.revoke_lease(self.lease_id)
        except Exception as exc:
            log.warning("controller %s: could not resign cleanly (%s)", self.controller_id, exc)
