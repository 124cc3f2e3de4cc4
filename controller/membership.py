"""A replica's place in the cluster: its registration on a lease, and the election for the duties
that must run once.

Each controller grants itself a lease (TTL ``--lease-ttl``) and keeps it alive at TTL/3 (aetcd
does not keep leases alive by itself). On that lease it keeps:

- ``controllers/<id>``: its ControllerRecord (id, listen address, version, start time);
- ``node-live/<node_id>``: one key per node whose stream it holds (NodeLiveness); its value is
  ``<controller_id>/<stream>``, naming the stream that wrote it, so a stream that ends removes the
  key only if no later stream of the node (on this replica or another) wrote it since;
- ``election/leader``: its id, while it holds the election.

Campaigning is one transaction: create ``election/leader`` only if absent (create revision 0).
A replica that loses watches the key and campaigns again when it is deleted: a clean resign, or
the holder's lease expiring when the holder died. The holder runs the duties until it stops
being the holder: the key changes or goes, or its lease may lapse (no successful keepalive for
TTL x 2/3, during an etcd partition: the next refresh could come too late). A lease found expired
is replaced by a new one, the registration and liveness keys written again, and the replica
campaigns anew.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import aetcd

from telltale.controller.store import Store
from telltale.v1 import inventory_pb2

log = logging.getLogger(__name__)

DEFAULT_LEASE_TTL_S = 10
RETRY_MIN_S = 0.1
RETRY_MAX_S = 2.0

Duties = Callable[[], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class LiveHandle:
    """One stream's hold on a node's liveness key: what node_connected returns and
    node_disconnected takes. `value` is what the stream wrote into the key."""

    node_id: str
    value: str


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
        self._held: dict[str, set[LiveHandle]] = {}  # node id -> its open streams here
        self._written: dict[str, str] = {}  # node id -> the value this replica put in its key last
        self._streams = itertools.count(1)
        self._last_refresh = 0.0
        self._refreshed = asyncio.Event()  # set at each successful refresh (or registration)
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
            value = self._written.get(node_id)
            if node_id in self._held and value is not None:  # still held (it may not be, after an await)
                await self._store.put_node_live(node_id, value, lease)
        # Only now: if a write above failed, the keepalive still finds the old lease expired and
        # registers again.
        self.lease_id = lease
        self._last_refresh = time.monotonic()
        self._refreshed.set()
        log.info(
            "controller %s registered with lease %x (ttl %ds)", self.controller_id, self.lease_id, self.ttl
        )

    async def _keep_alive(self) -> None:
        """Refresh the lease at TTL/3; replace it when etcd says it expired (TTL <= 0). A refresh
        that fails or gets no answer (None) is retried sooner; once none has succeeded for
        TTL x 2/3 the lease may lapse before the next one, so the duties stop at once
        (`lease_changed`) rather than run on while another replica may already lead."""
        interval = self.ttl / 3
        stale_after = self.ttl * 2 / 3
        wait = interval
        while True:
            await asyncio.sleep(wait)
            wait = interval
            # Never wait for an answer past the moment the lease counts as stale.
            timeout = max(min(interval, self._last_refresh + stale_after - time.monotonic()), 0.05)
            try:
                reply = await asyncio.wait_for(self._client.refresh_lease(self.lease_id), timeout)
                if reply is not None and reply.TTL > 0:
                    self._last_refresh = time.monotonic()
                    self._refreshed.set()
                    continue
                if reply is None:
                    raise LookupError("no keepalive answer")
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
                if overdue >= stale_after:
                    self._lease_changed.set()  # it may lapse any moment: stop acting as the leader
                wait = min(interval / 3, 1.0)

    # -- NodeLiveness ----------------------------------------------------------------------
    async def node_connected(self, node_id: str) -> LiveHandle:
        """A stream of `node_id` opened on this replica: write the node's liveness key on this
        replica's lease, naming this stream. Returns the stream's handle, for node_disconnected.
        Raises aetcd.ClientError when etcd cannot be reached (nothing is then held)."""
        handle = LiveHandle(node_id, f"{self.controller_id}/{next(self._streams)}")
        self._held.setdefault(node_id, set()).add(handle)
        self._written[node_id] = handle.value
        try:
            await self._store.put_node_live(node_id, handle.value, self.lease_id)
        except BaseException:
            with contextlib.suppress(Exception):  # the put may have landed: withdraw it
                await self.node_disconnected(handle)
            raise
        return handle

    async def node_disconnected(self, handle: object) -> None:
        """The stream of `handle` ended. When it was the last open stream of its node on this
        replica, delete the liveness key, only if it still holds the value this replica wrote
        last (a stream that opened since, here or on another replica, keeps its key). A handle
        released already is ignored. Raises aetcd.ClientError when etcd cannot be reached (the
        key then stays until the lease goes). Raises TypeError for anything but a LiveHandle."""
        if not isinstance(handle, LiveHandle):
            raise TypeError(f"node_disconnected takes node_connected's handle, not {handle!r}")
        value = self._release(handle)  # decided here, with no await before it is acted on
        if value is not None:
            await self._store.delete_node_live(handle.node_id, value)

    def _release(self, handle: LiveHandle) -> str | None:
        """Forget `handle`; when no stream of its node is left here, the value to delete the
        key at, else None."""
        handles = self._held.get(handle.node_id)
        if handles is None or handle not in handles:
            return None
        handles.discard(handle)
        if handles:
            return None
        del self._held[handle.node_id]
        return self._written.pop(handle.node_id, None)

    # -- the election ----------------------------------------------------------------------
    async def _lead(self, duties: Duties) -> None:
        """Campaign, run `duties` while elected, and campaign again, until cancelled."""
        delay = RETRY_MIN_S
        while True:
            try:
                await self._await_fresh_lease()
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

    def _stale(self) -> bool:
        """True when no refresh succeeded for TTL x 2/3: the lease may lapse any moment."""
        return time.monotonic() - self._last_refresh >= self.ttl * 2 / 3

    async def _await_fresh_lease(self) -> None:
        """Return once the lease was refreshed recently enough to act on it."""
        while self._stale():
            self._refreshed.clear()
            await self._refreshed.wait()

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
