"""EtcdStore: the Store interface on an etcd cluster, through aetcd (key layout in store.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import unquote

import aetcd
from aetcd.utils import prefix_range_end

from telltale.controller.store import (
    DEFAULT_PREFIX,
    MAX_BATCH_ALERTS,
    MAX_TXN_KEYS,
    Absent,
    AlertChange,
    Conflict,
    PolicyState,
    Replaced,
    Stale,
    Versioned,
    key_name,
    same_content,
    with_revision,
)
from telltale.v1 import alert_pb2, common_pb2, inventory_pb2, policy_pb2


class EtcdStore:
    """Store on an etcd cluster through aetcd."""

    def __init__(self, client: aetcd.Client, prefix: str = DEFAULT_PREFIX) -> None:
        self._client = client
        self._prefix = prefix

    # -- keys ------------------------------------------------------------------------------
    def _key(self, *parts: str) -> bytes:
        return (self._prefix + "/".join(parts)).encode()

    def _policy_key(self, name: str) -> bytes:
        return self._key("policy", "policies", key_name(name))

    def _history_key(self, name: str, revision: int) -> bytes:
        return self._key("policy-history", key_name(name), f"{revision:012d}")

    def _history_prefix(self, name: str) -> bytes:
        return self._key("policy-history", key_name(name)) + b"/"

    def _assignment_key(self, application: str, component: str) -> bytes:
        return self._key("policy", "assignments", key_name(application), key_name(component))

    def _generation_key(self) -> bytes:
        return self._key("policy", "generation")

    def _generation_put(self) -> object:
        return self._client.transactions.put(self._generation_key(), b"")

    def _policy_puts(self, policy: policy_pb2.Policy) -> list[object]:
        """The writes of one policy revision: the current copy, its history entry, the generation."""
        data = policy.SerializeToString()
        put = self._client.transactions.put
        return [
            put(self._policy_key(policy.name), data),
            put(self._history_key(policy.name, policy.revision), data),
            self._generation_put(),
        ]

    def _history_clearing(self, name: str, keep: int) -> list[object]:
        """Deletes of every history key of `name` but revision `keep`'s, which the caller writes.

        (etcd refuses a transaction that deletes a range holding a key it also puts.)"""
        prefix = self._history_prefix(name)
        kept = self._history_key(name, keep)
        delete = self._client.transactions.delete
        return [delete(prefix, kept), delete(kept + b"\0", prefix_range_end(prefix))]

    # -- policies --------------------------------------------------------------------------
    async def policy_state(self) -> PolicyState:
        base = self._key("policy") + b"/"
        result = await self._client.get_prefix(base)
        policies: dict[str, policy_pb2.Policy] = {}
        assignments: dict[tuple[str, str], str] = {}
        default = ""
        revision = 0
        for kv in result:
            revision = max(revision, kv.mod_revision)
            rel = kv.key[len(base) :].decode()
            if rel.startswith("policies/"):
                policy = policy_pb2.Policy()
                policy.ParseFromString(kv.value)
                policies[policy.name] = policy
            elif rel.startswith("assignments/"):
                _, app, comp = rel.split("/", 2)
                assignments[(unquote(app), unquote(comp))] = kv.value.decode()
            elif rel == "default":
                default = kv.value.decode()
        return PolicyState(policies, default, assignments, revision)

    async def watch_policy_state(self, after_revision: int) -> AsyncIterator[int]:
        watch = await self._client.watch_prefix(self._key("policy") + b"/", start_revision=after_revision + 1)
        try:
            async for event in watch:
                yield int(event.kv.mod_revision)
        finally:
            await watch.cancel()

    async def seed_policies(self, policies: list[policy_pb2.Policy], default_policy: str) -> list[str]:
        written = []
        txn = self._client.transactions
        for builtin in policies:
            key = self._policy_key(builtin.name)
            current = await self._client.get(key)
            if current is not None:
                stored = policy_pb2.Policy()
                stored.ParseFromString(current.value)
                if not stored.builtin:
                    continue  # an operator's policy already has this name: never overwrite it
                if same_content(stored, builtin):
                    continue
                policy = with_revision(builtin, stored.revision + 1)
                compare = [txn.mod(key) == current.mod_revision]
            else:
                policy = with_revision(builtin, 1)
                compare = [txn.create(key) == 0]
            ok, _ = await self._client.transaction(
                compare=compare, success=self._policy_puts(policy), failure=[]
            )
            if ok:
                written.append(policy.name)
        default_key = self._key("policy", "default")
        ok, _ = await self._client.transaction(
            compare=[txn.create(default_key) == 0],
            success=[txn.put(default_key, default_policy.encode()), self._generation_put()],
            failure=[],
        )
        return written

    async def create_policy(self, policy: policy_pb2.Policy) -> int:
        ok, responses = await self._client.transaction(
            compare=[self._expect(self._policy_key(policy.name), 0)],
            success=[*self._policy_puts(policy), *self._history_clearing(policy.name, policy.revision)],
            failure=[],
        )
        if not ok:
            raise Conflict(f"policy {policy.name!r} already exists")
        return int(responses[0].response_put.header.revision)

    async def update_policy(self, policy: policy_pb2.Policy, expected_mod_revision: int) -> int:
        ok, responses = await self._client.transaction(
            compare=[self._client.transactions.mod(self._policy_key(policy.name)) == expected_mod_revision],
            success=self._policy_puts(policy),
            failure=[],
        )
        if not ok:
            raise Conflict(f"policy {policy.name!r} changed since it was read")
        return int(responses[0].response_put.header.revision)

    async def get_policy(self, name: str) -> Versioned[policy_pb2.Policy] | None:
        """Read one policy with its key's mod revision."""
        kv = await self._client.get(self._policy_key(name))
        if kv is None:
            return None
        policy = policy_pb2.Policy()
        policy.ParseFromString(kv.value)
        return Versioned(policy, int(kv.mod_revision))

    async def delete_policy(self, name: str, expected_state_revision: int) -> int:
        key = self._policy_key(name)
        txn = self._client.transactions
        ok, responses = await self._client.transaction(
            compare=[txn.mod(self._generation_key()) == expected_state_revision, txn.version(key) > 0],
            success=[self._generation_put(), txn.delete(key)],
            failure=[txn.get(key)],
        )
        if not ok:
            if not responses[0]:
                raise Absent(f"no policy named {name!r}")
            raise Conflict(f"the policy state changed after revision {expected_state_revision}")
        return int(responses[0].response_put.header.revision)

    async def set_default_policy(self, name: str) -> Replaced:
        return await self._putkey_name(self._key("policy", "default"), name)

    async def assign_policy(self, application: str, component: str, policy: str) -> Replaced:
        return await self._putkey_name(self._assignment_key(application, component), policy)

    async def _putkey_name(self, key: bytes, policy: str) -> Replaced:
        """Put a policy name at `key` if that policy exists; the former name and the revision."""
        txn = self._client.transactions
        ok, responses = await self._client.transaction(
            compare=[txn.version(self._policy_key(policy)) > 0],
            success=[txn.put(key, policy.encode(), prev_kv=True), self._generation_put()],
            failure=[],
        )
        if not ok:
            raise Absent(f"no policy named {policy!r}")
        put = responses[0].response_put
        previous = put.prev_kv.value.decode() if put.HasField("prev_kv") else ""
        return Replaced(previous, int(put.header.revision))

    async def unassign_policy(self, application: str, component: str) -> Replaced:
        key = self._assignment_key(application, component)
        txn = self._client.transactions
        ok, responses = await self._client.transaction(
            compare=[txn.version(key) > 0],
            success=[self._generation_put(), txn.delete(key, prev_kv=True)],
            failure=[],
        )
        if not ok:
            return Replaced("", 0)
        previous = responses[1].response_delete_range.prev_kvs[0].value.decode()
        return Replaced(previous, int(responses[0].response_put.header.revision))

    async def get_policy_revision(self, name: str, revision: int) -> policy_pb2.Policy | None:
        if revision < 1:
            return None
        kv = await self._client.get(self._history_key(name, revision))
        if kv is None:
            return None
        policy = policy_pb2.Policy()
        policy.ParseFromString(kv.value)
        return policy

    async def list_policy_revisions(
        self, name: str, *, before: int = 0, limit: int = 0
    ) -> list[policy_pb2.Policy]:
        prefix = self._history_prefix(name)
        keys = await self._client.get_prefix(prefix, sort_order="descend", keys_only=True)
        below = self._history_key(name, before) if before > 0 else None
        page = [kv.key for kv in keys if below is None or kv.key < below]
        if limit > 0:
            page = page[:limit]
        if not page:
            return []
        # The values of just this page: one read of the key range it spans.
        result = await self._client.get_range(page[-1], page[0] + b"\0")
        revisions = []
        for kv in result:
            policy = policy_pb2.Policy()
            policy.ParseFromString(kv.value)
            revisions.append(policy)
        revisions.sort(key=lambda p: p.revision, reverse=True)
        return revisions

    # -- alerts ----------------------------------------------------------------------------
    def _alert_key(self, fingerprint: str) -> bytes:
        return self._key("alerts", key_name(fingerprint))

    async def get_alert(self, fingerprint: str) -> Versioned[alert_pb2.Alert] | None:
        kv = await self._client.get(self._alert_key(fingerprint))
        if kv is None:
            return None
        alert = alert_pb2.Alert()
        alert.ParseFromString(kv.value)
        alert.revision = kv.mod_revision
        return Versioned(alert, int(kv.mod_revision))

    async def put_alert(self, alert: alert_pb2.Alert, expected_mod_revision: int) -> int:
        key = self._alert_key(alert.fingerprint)
        txn = self._client.transactions
        compare = (
            [txn.create(key) == 0] if expected_mod_revision == 0 else [txn.mod(key) == expected_mod_revision]
        )
        stored = alert_pb2.Alert()
        stored.CopyFrom(alert)
        stored.ClearField("revision")
        ok, responses = await self._client.transaction(
            compare=compare, success=[txn.put(key, stored.SerializeToString())], failure=[]
        )
        if not ok:
            raise Conflict(f"alert {alert.fingerprint} changed concurrently")
        return int(responses[0].response_put.header.revision)

    async def list_alerts(self) -> tuple[list[Versioned[alert_pb2.Alert]], int]:
        result = await self._client.get_prefix(self._key("alerts") + b"/")
        alerts = []
        for kv in result:
            alert = alert_pb2.Alert()
            alert.ParseFromString(kv.value)
            alert.revision = kv.mod_revision
            alerts.append(Versioned(alert, int(kv.mod_revision)))
        return alerts, int(result.header.revision)

    async def watch_alerts(self, after_revision: int) -> AsyncIterator[list[AlertChange]]:
        base = self._key("alerts") + b"/"
        watch = await self._client.watch_prefix(base, start_revision=after_revision + 1)
        # The events of one etcd watch response arrive together: a pump moves them into a queue
        # without suspending, so everything queued when we wake up can be grouped by revision.
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def pump() -> None:
            try:
                async for event in watch:
                    queue.put_nowait(event)
            except Exception as exc:
                queue.put_nowait(exc)

        pumping = asyncio.create_task(pump())
        try:
            while True:
                events = [await queue.get()]
                while not queue.empty():
                    events.append(queue.get_nowait())
                group: list[AlertChange] = []
                for event in events:
                    if isinstance(event, Exception):
                        raise event
                    change = self._alert_change(base, event)
                    if group and change.revision != group[0].revision:
                        yield group
                        group = []
                    group.append(change)
                if group:
                    yield group
        finally:
            pumping.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pumping
            await watch.cancel()

    @staticmethod
    def _alert_change(base: bytes, event: Any) -> AlertChange:
        fingerprint = unquote(event.kv.key[len(base) :].decode())
        revision = int(event.kv.mod_revision)
        if event.kind == "DELETE":
            return AlertChange(fingerprint, None, revision, created=False)
        alert = alert_pb2.Alert()
        alert.ParseFromString(event.kv.value)
        alert.revision = revision
        return AlertChange(fingerprint, alert, revision, created=event.kv.version == 1)

    # -- nodes and workloads ---------------------------------------------------------------
    async def get_node(self, node_id: str) -> Versioned[inventory_pb2.Node] | None:
        kv = await self._client.get(self._node_key(node_id))
        if kv is None:
            return None
        node = inventory_pb2.Node()
        node.ParseFromString(kv.value)
        return Versioned(node, int(kv.mod_revision))

    def _node_key(self, node_id: str) -> bytes:
        return self._key("nodes", key_name(node_id))

    def _expect(self, key: bytes, mod_revision: int) -> object:
        txn = self._client.transactions
        return txn.create(key) == 0 if mod_revision == 0 else txn.mod(key) == mod_revision

    async def put_node(self, node: inventory_pb2.Node, expected_mod_revision: int) -> int:
        key = self._node_key(node.node_id)
        ok, responses = await self._client.transaction(
            compare=[self._expect(key, expected_mod_revision)],
            success=[self._client.transactions.put(key, node.SerializeToString())],
            failure=[],
        )
        if not ok:
            raise Conflict(f"node {node.node_id} changed concurrently")
        return int(responses[0].response_put.header.revision)

    async def commit_batch(
        self,
        node: inventory_pb2.Node,
        expected_node_revision: int,
        alerts: Sequence[tuple[alert_pb2.Alert, int]],
    ) -> int:
        if len(alerts) > MAX_BATCH_ALERTS:
            raise ValueError(f"{len(alerts)} alerts in one commit, the limit is {MAX_BATCH_ALERTS}")
        txn = self._client.transactions
        node_key = self._node_key(node.node_id)
        compare = [self._expect(node_key, expected_node_revision)]
        success = [txn.put(node_key, node.SerializeToString())]
        for alert, expected in alerts:
            key = self._alert_key(alert.fingerprint)
            compare.append(self._expect(key, expected))
            stored = alert_pb2.Alert()
            stored.CopyFrom(alert)
            stored.ClearField("revision")
            success.append(txn.put(key, stored.SerializeToString()))
        ok, responses = await self._client.transaction(compare=compare, success=success, failure=[])
        if not ok:
            raise Conflict(f"node {node.node_id}: the batch's alerts or node record changed concurrently")
        return int(responses[0].response_put.header.revision)

    async def commit_records(
        self,
        nodes: Sequence[tuple[inventory_pb2.Node, int]],
        alerts: Sequence[tuple[alert_pb2.Alert, int]],
    ) -> int:
        count = len(nodes) + len(alerts)
        if not 0 < count <= MAX_TXN_KEYS:
            raise ValueError(f"{count} keys in one commit, the limit is 1 to {MAX_TXN_KEYS}")
        txn = self._client.transactions
        compare, success, failure = [], [], []
        keys: set[bytes] = set()
        for node, revision in nodes:
            key = self._node_key(node.node_id)
            keys.add(key)
            compare.append(self._expect(key, revision))
            success.append(txn.put(key, node.SerializeToString()))
            failure.append(txn.get(key))
        for alert, revision in alerts:
            key = self._alert_key(alert.fingerprint)
            keys.add(key)
            compare.append(self._expect(key, revision))
            stored = alert_pb2.Alert()
            stored.CopyFrom(alert)
            stored.ClearField("revision")
            success.append(txn.put(key, stored.SerializeToString()))
            failure.append(txn.get(key))
        if len(keys) != count:
            raise ValueError("a commit may write each key only once")
        ok, responses = await self._client.transaction(compare=compare, success=success, failure=failure)
        if ok:
            return int(responses[0].response_put.header.revision)
        # The failure branch read every key in the same transaction: report the ones that moved.
        moved_nodes: dict[str, Versioned[inventory_pb2.Node] | None] = {}
        moved_alerts: dict[str, Versioned[alert_pb2.Alert] | None] = {}
        for index, found in enumerate(responses):
            current = found[0][1] if found else None
            revision = int(current.mod_revision) if current is not None else 0
            if index < len(nodes):
                node = nodes[index][0]
                if revision != nodes[index][1]:
                    value = inventory_pb2.Node()
                    if current is not None:
                        value.ParseFromString(found[0][0])
                    moved_nodes[node.node_id] = Versioned(value, revision) if current is not None else None
            else:
                written, expected = alerts[index - len(nodes)]
                if revision != expected:
                    stored_alert = None
                    if current is not None:
                        parsed = alert_pb2.Alert()
                        parsed.ParseFromString(found[0][0])
                        parsed.revision = revision
                        stored_alert = Versioned(parsed, revision)
                    moved_alerts[written.fingerprint] = stored_alert
        raise Stale(
            f"{len(moved_nodes)} node records and {len(moved_alerts)} alerts changed concurrently",
            moved_nodes,
            moved_alerts,
        )

    async def list_nodes(self) -> list[inventory_pb2.Node]:
        result = await self._client.get_prefix(self._key("nodes") + b"/")
        nodes = []
        for kv in result:
            node = inventory_pb2.Node()
            node.ParseFromString(kv.value)
            nodes.append(node)
        return nodes

    async def list_node_records(self) -> list[Versioned[inventory_pb2.Node]]:
        result = await self._client.get_prefix(self._key("nodes") + b"/")
        records = []
        for kv in result:
            node = inventory_pb2.Node()
            node.ParseFromString(kv.value)
            records.append(Versioned(node, int(kv.mod_revision)))
        return records

    # -- node liveness ---------------------------------------------------------------------
    def _live_key(self, node_id: str) -> bytes:
        return self._key("node-live", key_name(node_id))

    async def put_node_live(self, node_id: str, controller_id: str, lease: int) -> None:
        await self._client.put(self._live_key(node_id), controller_id.encode(), lease=lease)

    async def delete_node_live(self, node_id: str, controller_id: str) -> None:
        key = self._live_key(node_id)
        txn = self._client.transactions
        await self._client.transaction(
            compare=[txn.value(key) == controller_id.encode()], success=[txn.delete(key)], failure=[]
        )

    async def live_nodes(self) -> dict[str, str]:
        base = self._key("node-live") + b"/"
        result = await self._client.get_prefix(base)
        return {unquote(kv.key[len(base) :].decode()): kv.value.decode() for kv in result}

    async def watch_node_live(self) -> AsyncIterator[str]:
        base = self._key("node-live") + b"/"
        watch = await self._client.watch_prefix(base)
        try:
            async for event in watch:
                if event.kind == "DELETE":
                    yield unquote(event.kv.key[len(base) :].decode())
        finally:
            await watch.cancel()

    async def expire_node(self, node: inventory_pb2.Node, expected_mod_revision: int) -> bool:
        key = self._node_key(node.node_id)
        txn = self._client.transactions
        ok, _ = await self._client.transaction(
            compare=[
                self._expect(key, expected_mod_revision),
                txn.create(self._live_key(node.node_id)) == 0,
            ],
            success=[txn.put(key, node.SerializeToString())],
            failure=[],
        )
        return bool(ok)

    async def delete_alerts(self, alerts: Sequence[tuple[str, int]]) -> int:
        if len(alerts) > MAX_BATCH_ALERTS:
            raise ValueError(f"{len(alerts)} deletions in one transaction, the limit is {MAX_BATCH_ALERTS}")
        if not alerts:
            return 0
        txn = self._client.transactions
        # One nested transaction per alert: each is conditional on its own revision, and all go
        # in one round trip.
        ops = []
        for fingerprint, revision in alerts:
            key = self._alert_key(fingerprint)
            ops.append(txn.txn(compare=[txn.mod(key) == revision], success=[txn.delete(key)], failure=[]))
        _, responses = await self._client.transaction(compare=[], success=ops, failure=[])
        return sum(1 for r in responses if r.response_txn.succeeded)

    async def put_workload(self, workload: common_pb2.Workload) -> None:
        await self._client.put(self._key("workloads", key_name(workload.id)), workload.SerializeToString())

    async def get_workload(self, workload_id: str) -> common_pb2.Workload | None:
        kv = await self._client.get(self._key("workloads", key_name(workload_id)))
        if kv is None:
            return None
        workload = common_pb2.Workload()
        workload.ParseFromString(kv.value)
        return workload

    async def list_workloads(self) -> list[common_pb2.Workload]:
        result = await self._client.get_prefix(self._key("workloads") + b"/")
        workloads = []
        for kv in result:
            workload = common_pb2.Workload()
            workload.ParseFromString(kv.value)
            workloads.append(workload)
        return workloads
