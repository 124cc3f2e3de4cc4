"""The controller's shared state in memory: the twin of EtcdStore for tests and local tools.

MemoryStore keeps etcd's data model, so code written against the Store interface behaves the
same on both:

- one store revision, starting at 1 like a fresh etcd, increased by one for every call that
  writes; every key that call writes gets that revision as its mod revision (an etcd transaction);
- compare-and-swap on mod revisions, where 0 means "must not exist", and on a key's existence;
  a failed comparison raises Conflict (or Absent) and writes nothing, and does not move the
  revision;
- deletions, which watches see as changes without a value;
- the same key layout as EtcdStore (without the prefix), so the policy-state revision is the
  highest mod revision under ``policy/``;
- watches that replay the retained history after a revision, then follow new writes. History is
  bounded: a watch that starts (or falls) further behind than the retained history raises
  ``aetcd.RevisionCompactedError``, the error EtcdStore's watches raise after an etcd compaction,
  so the services map both the same way.

Every call suspends once before it acts, as a round trip to etcd would, so concurrent callers
interleave and their compare-and-swap races happen for real. A store belongs to one event loop
at a time and is not thread-safe.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import unquote

import aetcd
from google.protobuf.message import Message

from telltale.controller.store import (
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

DEFAULT_HISTORY = 10_000
"""Revisions a MemoryStore keeps for watches unless told otherwise."""

_POLICY = "policy/"
_POLICIES = "policy/policies/"
_ASSIGNMENTS = "policy/assignments/"
_DEFAULT = "policy/default"
_GENERATION = "policy/generation"
_HISTORY = "policy-history/"
_ALERTS = "alerts/"
_NODES = "nodes/"
_WORKLOADS = "workloads/"
_NODE_LIVE = "node-live/"

M = TypeVar("M", bound=Message)


@dataclass(frozen=True, slots=True)
class _Entry:
    """One key's current value and its etcd-style revisions."""

    value: bytes
    create_revision: int
    mod_revision: int
    version: int


@dataclass(frozen=True, slots=True)
class _Revision:
    """The keys one write changed, as they were written (None for a deleted key)."""

    revision: int
    changes: tuple[tuple[str, _Entry | None], ...]


def _parsed(cls: type[M], data: bytes) -> M:
    message = cls()
    message.ParseFromString(data)
    return message


def _without_revision(alert: alert_pb2.Alert) -> bytes:
    stored = alert_pb2.Alert()
    stored.CopyFrom(alert)
    stored.ClearField("revision")
    return stored.SerializeToString()


class MemoryStore:
    """Store kept in process memory, with the revisions, compare-and-swap and watches of etcd."""

    def __init__(self, *, history: int = DEFAULT_HISTORY) -> None:
        """`history` is how many of the latest writes watches can replay (at least 1)."""
        if history < 1:
            raise ValueError(f"history must keep at least one revision, got {history}")
        self._kv: dict[str, _Entry] = {}
        self._revision = 1
        self._history: deque[_Revision] = deque()
        self._history_limit = history
        self._compacted = 0  # the newest revision no longer in the history
        self._watchers: set[asyncio.Event] = set()
        self._leases: dict[str, int] = {}  # key -> the lease it is attached to

    @property
    def revision(self) -> int:
        """The current store revision (the mod revision of the latest write)."""
        return self._revision

    async def compact(self, revision: int) -> None:
        """Forget the history before `revision`, as etcd's compaction does.

        Watches may still start after `revision - 1`; earlier starts raise RevisionCompactedError.
        Raises ValueError for a revision the store has not reached.
        """
        if revision > self._revision:
            raise ValueError(f"cannot compact at {revision}: the store is at revision {self._revision}")
        await asyncio.sleep(0)
        while self._history and self._history[0].revision < revision:
            self._history.popleft()
        self._compacted = max(self._compacted, revision - 1)

    # -- the key-value core ----------------------------------------------------------------
    def _mod_revision(self, key: str) -> int:
        entry = self._kv.get(key)
        return entry.mod_revision if entry is not None else 0

    def _txn(
        self,
        compare: Sequence[tuple[str, int]],
        puts: Sequence[tuple[str, bytes]],
        deletes: Sequence[str] = (),
        *,
        present: Sequence[str] = (),
    ) -> int | None:
        """Write `puts` and `deletes` at one new revision if every key of `compare` is at its expected
        mod revision (0 = absent) and every key of `present` exists.

        Returns the new revision, or None (nothing written) when a comparison fails.
        Raises ValueError when a key is written twice, as etcd refuses such a transaction.
        """
        written = [key for key, _ in puts] + list(deletes)
        if len(set(written)) != len(written):
            raise ValueError("a transaction may write each key only once")
        if any(self._mod_revision(key) != expected for key, expected in compare):
            return None
        if any(key not in self._kv for key in present):
            return None
        self._revision += 1
        revision = self._revision
        changes: list[tuple[str, _Entry | None]] = []
        for key in deletes:
            self._leases.pop(key, None)
            if self._kv.pop(key, None) is not None:
                changes.append((key, None))
        for key, value in puts:
            old = self._kv.get(key)
            entry = _Entry(
                value,
                create_revision=old.create_revision if old is not None else revision,
                mod_revision=revision,
                version=old.version + 1 if old is not None else 1,
            )
            self._kv[key] = entry
            changes.append((key, entry))
        self._history.append(_Revision(revision, tuple(changes)))
        while len(self._history) > self._history_limit:
            self._compacted = self._history.popleft().revision
        for wake in self._watchers:
            wake.set()
        return revision

    def _range(self, prefix: str) -> Iterator[tuple[str, _Entry]]:
        """The keys under `prefix` in key order, as an etcd range read returns them."""
        for key in sorted(k for k in self._kv if k.startswith(prefix)):
            yield key, self._kv[key]

    def _history_after(self, revision: int) -> list[_Revision]:
        """The retained writes after `revision`; raises RevisionCompactedError if some are gone."""
        if revision < self._compacted:
            raise aetcd.RevisionCompactedError(self._compacted + 1)
        if not self._history or self._history[-1].revision <= revision:
            return []
        start = max(revision + 1 - self._history[0].revision, 0)
        return list(islice(self._history, start, None))

    async def _follow(self, after_revision: int, wanted: Callable[[str], bool]) -> AsyncIterator[_Revision]:
        """Each write after `after_revision` that changed a `wanted` key (with only those keys), forever."""
        wake = asyncio.Event()
        self._watchers.add(wake)
        try:
            position = after_revision
            while True:
                wake.clear()
                pending = self._history_after(position)
                if not pending:
                    await wake.wait()
                    continue
                # `pending` holds its writes even if the history drops them while the consumer
                # runs; the next _history_after() notices a consumer that fell behind.
                for written in pending:
                    position = written.revision
                    changes = tuple((key, entry) for key, entry in written.changes if wanted(key))
                    if changes:
                        yield _Revision(written.revision, changes)
        finally:
            self._watchers.discard(wake)

    # -- policies --------------------------------------------------------------------------
    async def policy_state(self) -> PolicyState:
        await asyncio.sleep(0)
        policies: dict[str, policy_pb2.Policy] = {}
        assignments: dict[tuple[str, str], str] = {}
        default = ""
        revision = 0
        for key, entry in self._range(_POLICY):
            revision = max(revision, entry.mod_revision)
            if key.startswith(_POLICIES):
                policy = _parsed(policy_pb2.Policy, entry.value)
                policies[policy.name] = policy
            elif key.startswith(_ASSIGNMENTS):
                app, comp = key[len(_ASSIGNMENTS) :].split("/", 1)
                assignments[(unquote(app), unquote(comp))] = entry.value.decode()
            elif key == _DEFAULT:
                default = entry.value.decode()
        return PolicyState(policies, default, assignments, revision)

    async def watch_policy_state(self, after_revision: int) -> AsyncIterator[int]:
        async for written in self._follow(after_revision, lambda key: key.startswith(_POLICY)):
            yield written.revision

    def _policy_history(self, name: str) -> list[str]:
        """The history keys of a policy, oldest first."""
        return [key for key, _ in self._range(f"{_HISTORY}{key_name(name)}/")]

    def _policy_puts(self, policy: policy_pb2.Policy) -> list[tuple[str, bytes]]:
        data = policy.SerializeToString()
        name = key_name(policy.name)
        return [
            (_POLICIES + name, data),
            (f"{_HISTORY}{name}/{policy.revision:012d}", data),
            (_GENERATION, b""),
        ]

    async def seed_policies(self, policies: list[policy_pb2.Policy], default_policy: str) -> list[str]:
        written = []
        for builtin in policies:
            await asyncio.sleep(0)
            key = _POLICIES + key_name(builtin.name)
            current = self._kv.get(key)
            if current is not None:
                stored = _parsed(policy_pb2.Policy, current.value)
                if not stored.builtin:
                    continue  # an operator's policy already has this name: never overwrite it
                if same_content(stored, builtin):
                    continue
                policy = with_revision(builtin, stored.revision + 1)
                expected = current.mod_revision
            else:
                policy = with_revision(builtin, 1)
                expected = 0
            await asyncio.sleep(0)  # read and write are two requests, as on etcd
            if self._txn([(key, expected)], self._policy_puts(policy)) is not None:
                written.append(policy.name)
        await asyncio.sleep(0)
        self._txn([(_DEFAULT, 0)], [(_DEFAULT, default_policy.encode()), (_GENERATION, b"")])
        return written

    async def create_policy(self, policy: policy_pb2.Policy) -> int:
        await asyncio.sleep(0)
        puts = self._policy_puts(policy)
        written = {key for key, _ in puts}
        stale = [key for key in self._policy_history(policy.name) if key not in written]
        revision = self._txn([(_POLICIES + key_name(policy.name), 0)], puts, stale)
        if revision is None:
            raise Conflict(f"policy {policy.name!r} already exists")
        return revision

    async def update_policy(self, policy: policy_pb2.Policy, expected_mod_revision: int) -> int:
        await asyncio.sleep(0)
        key = _POLICIES + key_name(policy.name)
        revision = self._txn([(key, expected_mod_revision)], self._policy_puts(policy))
        if revision is None:
            raise Conflict(f"policy {policy.name!r} changed since it was read")
        return revision

    async def get_policy(self, name: str) -> Versioned[policy_pb2.Policy] | None:
        await asyncio.sleep(0)
        entry = self._kv.get(_POLICIES + key_name(name))
        if entry is None:
            return None
        return Versioned(_parsed(policy_pb2.Policy, entry.value), entry.mod_revision)

    async def delete_policy(self, name: str, expected_state_revision: int) -> int:
        await asyncio.sleep(0)
        key = _POLICIES + key_name(name)
        if key not in self._kv:
            raise Absent(f"no policy named {name!r}")
        revision = self._txn([(_GENERATION, expected_state_revision)], [(_GENERATION, b"")], [key])
        if revision is None:
            raise Conflict(f"the policy state changed after revision {expected_state_revision}")
        return revision

    async def set_default_policy(self, name: str) -> Replaced:
        await asyncio.sleep(0)
        return self._putkey_name(_DEFAULT, name)

    async def assign_policy(self, application: str, component: str, policy: str) -> Replaced:
        await asyncio.sleep(0)
        return self._putkey_name(f"{_ASSIGNMENTS}{key_name(application)}/{key_name(component)}", policy)

    def _putkey_name(self, key: str, policy: str) -> Replaced:
        """Put a policy name at `key` if that policy exists; the former name and the revision."""
        old = self._kv.get(key)
        puts = [(key, policy.encode()), (_GENERATION, b"")]
        revision = self._txn([], puts, present=[_POLICIES + key_name(policy)])
        if revision is None:
            raise Absent(f"no policy named {policy!r}")
        return Replaced(old.value.decode() if old is not None else "", revision)

    async def unassign_policy(self, application: str, component: str) -> Replaced:
        await asyncio.sleep(0)
        key = f"{_ASSIGNMENTS}{key_name(application)}/{key_name(component)}"
        old = self._kv.get(key)
        if old is None:
            return Replaced("", 0)
        revision = self._txn([(key, old.mod_revision)], [(_GENERATION, b"")], [key])
        assert revision is not None, "nothing runs between the read and the write"
        return Replaced(old.value.decode(), revision)

    async def get_policy_revision(self, name: str, revision: int) -> policy_pb2.Policy | None:
        await asyncio.sleep(0)
        entry = self._kv.get(f"{_HISTORY}{key_name(name)}/{revision:012d}") if revision > 0 else None
        return _parsed(policy_pb2.Policy, entry.value) if entry is not None else None

    async def list_policy_revisions(
        self, name: str, *, before: int = 0, limit: int = 0
    ) -> list[policy_pb2.Policy]:
        await asyncio.sleep(0)
        revisions = [_parsed(policy_pb2.Policy, self._kv[key].value) for key in self._policy_history(name)]
        revisions.sort(key=lambda p: p.revision, reverse=True)
        if before > 0:
            revisions = [p for p in revisions if p.revision < before]
        return revisions[:limit] if limit > 0 else revisions

    # -- alerts ----------------------------------------------------------------------------
    @staticmethod
    def _alert(entry: _Entry) -> alert_pb2.Alert:
        alert = _parsed(alert_pb2.Alert, entry.value)
        alert.revision = entry.mod_revision
        return alert

    async def get_alert(self, fingerprint: str) -> Versioned[alert_pb2.Alert] | None:
        await asyncio.sleep(0)
        entry = self._kv.get(_ALERTS + key_name(fingerprint))
        if entry is None:
            return None
        return Versioned(self._alert(entry), entry.mod_revision)

    async def put_alert(self, alert: alert_pb2.Alert, expected_mod_revision: int) -> int:
        await asyncio.sleep(0)
        key = _ALERTS + key_name(alert.fingerprint)
        revision = self._txn([(key, expected_mod_revision)], [(key, _without_revision(alert))])
        if revision is None:
            raise Conflict(f"alert {alert.fingerprint} changed concurrently")
        return revision

    async def list_alerts(self) -> tuple[list[Versioned[alert_pb2.Alert]], int]:
        await asyncio.sleep(0)
        alerts = [Versioned(self._alert(entry), entry.mod_revision) for _, entry in self._range(_ALERTS)]
        return alerts, self._revision

    async def watch_alerts(self, after_revision: int) -> AsyncIterator[list[AlertChange]]:
        async for written in self._follow(after_revision, lambda key: key.startswith(_ALERTS)):
            yield [
                AlertChange(
                    unquote(key[len(_ALERTS) :]),
                    self._alert(entry) if entry is not None else None,
                    written.revision,
                    created=entry is not None and entry.version == 1,
                )
                for key, entry in written.changes
            ]

    # -- nodes and workloads ---------------------------------------------------------------
    async def get_node(self, node_id: str) -> Versioned[inventory_pb2.Node] | None:
        await asyncio.sleep(0)
        entry = self._kv.get(_NODES + key_name(node_id))
        if entry is None:
            return None
        return Versioned(_parsed(inventory_pb2.Node, entry.value), entry.mod_revision)

    async def put_node(self, node: inventory_pb2.Node, expected_mod_revision: int) -> int:
        await asyncio.sleep(0)
        key = _NODES + key_name(node.node_id)
        revision = self._txn([(key, expected_mod_revision)], [(key, node.SerializeToString())])
        if revision is None:
            raise Conflict(f"node {node.node_id} changed concurrently")
        return revision

    async def commit_batch(
        self,
        node: inventory_pb2.Node,
        expected_node_revision: int,
        alerts: Sequence[tuple[alert_pb2.Alert, int]],
    ) -> int:
        if len(alerts) > MAX_BATCH_ALERTS:
            raise ValueError(f"{len(alerts)} alerts in one commit, the limit is {MAX_BATCH_ALERTS}")
        await asyncio.sleep(0)
        node_key = _NODES + key_name(node.node_id)
        compare = [(node_key, expected_node_revision)]
        puts = [(node_key, node.SerializeToString())]
        for alert, expected in alerts:
            key = _ALERTS + key_name(alert.fingerprint)
            compare.append((key, expected))
            puts.append((key, _without_revision(alert)))
        revision = self._txn(compare, puts)
        if revision is None:
            raise Conflict(f"node {node.node_id}: the batch's alerts or node record changed concurrently")
        return revision

    async def commit_records(
        self,
        nodes: Sequence[tuple[inventory_pb2.Node, int]],
        alerts: Sequence[tuple[alert_pb2.Alert, int]],
    ) -> int:
        count = len(nodes) + len(alerts)
        if not 0 < count <= MAX_TXN_KEYS:
            raise ValueError(f"{count} keys in one commit, the limit is 1 to {MAX_TXN_KEYS}")
        await asyncio.sleep(0)
        compare: list[tuple[str, int]] = []
        puts: list[tuple[str, bytes]] = []
        for node, expected in nodes:
            key = _NODES + key_name(node.node_id)
            compare.append((key, expected))
            puts.append((key, node.SerializeToString()))
        for alert, expected in alerts:
            key = _ALERTS + key_name(alert.fingerprint)
            compare.append((key, expected))
            puts.append((key, _without_revision(alert)))
        if len({key for key, _ in puts}) != count:
            raise ValueError("a commit may write each key only once")
        revision = self._txn(compare, puts)
        if revision is not None:
            return revision
        moved_nodes: dict[str, Versioned[inventory_pb2.Node] | None] = {}
        moved_alerts: dict[str, Versioned[alert_pb2.Alert] | None] = {}
        for node, expected in nodes:
            entry = self._kv.get(_NODES + key_name(node.node_id))
            if (entry.mod_revision if entry is not None else 0) != expected:
                moved_nodes[node.node_id] = (
                    Versioned(_parsed(inventory_pb2.Node, entry.value), entry.mod_revision)
                    if entry is not None
                    else None
                )
        for alert, expected in alerts:
            entry = self._kv.get(_ALERTS + key_name(alert.fingerprint))
            if (entry.mod_revision if entry is not None else 0) != expected:
                moved_alerts[alert.fingerprint] = (
                    Versioned(self._alert(entry), entry.mod_revision) if entry is not None else None
                )
        raise Stale(
            f"{len(moved_nodes)} node records and {len(moved_alerts)} alerts changed concurrently",
            moved_nodes,
            moved_alerts,
        )

    async def list_nodes(self) -> list[inventory_pb2.Node]:
        await asyncio.sleep(0)
        return [_parsed(inventory_pb2.Node, entry.value) for _, entry in self._range(_NODES)]

    async def list_node_records(self) -> list[Versioned[inventory_pb2.Node]]:
        await asyncio.sleep(0)
        return [
            Versioned(_parsed(inventory_pb2.Node, entry.value), entry.mod_revision)
            for _, entry in self._range(_NODES)
        ]

    # -- node liveness ---------------------------------------------------------------------
    async def put_node_live(self, node_id: str, controller_id: str, lease: int) -> None:
        await asyncio.sleep(0)
        key = _NODE_LIVE + key_name(node_id)
        self._txn([], [(key, controller_id.encode())])
        self._leases[key] = lease

    async def revoke_lease(self, lease: int) -> None:
        """Delete every key attached to `lease` in one revision, as etcd does when a lease expires."""
        await asyncio.sleep(0)
        keys = [key for key, attached in self._leases.items() if attached == lease]
        if keys:
            self._txn([], [], keys)

    async def delete_node_live(self, node_id: str, controller_id: str) -> None:
        await asyncio.sleep(0)
        key = _NODE_LIVE + key_name(node_id)
        entry = self._kv.get(key)
        if entry is not None and entry.value == controller_id.encode():
            self._txn([], [], [key])

    async def live_nodes(self) -> dict[str, str]:
        await asyncio.sleep(0)
        return {
            unquote(key[len(_NODE_LIVE) :]): entry.value.decode() for key, entry in self._range(_NODE_LIVE)
        }

    async def watch_node_live(self) -> AsyncIterator[str]:
        async for written in self._follow(self._revision, lambda key: key.startswith(_NODE_LIVE)):
            for key, entry in written.changes:
                if entry is None:
                    yield unquote(key[len(_NODE_LIVE) :])

    async def expire_node(self, node: inventory_pb2.Node, expected_mod_revision: int) -> bool:
        await asyncio.sleep(0)
        key = _NODES + key_name(node.node_id)
        live = _NODE_LIVE + key_name(node.node_id)
        return (
            self._txn([(key, expected_mod_revision), (live, 0)], [(key, node.SerializeToString())])
            is not None
        )

    async def delete_alerts(self, alerts: Sequence[tuple[str, int]]) -> int:
        if len(alerts) > MAX_BATCH_ALERTS:
            raise ValueError(f"{len(alerts)} deletions in one transaction, the limit is {MAX_BATCH_ALERTS}")
        await asyncio.sleep(0)
        keys = [
            _ALERTS + key_name(fp)
            for fp, revision in alerts
            if self._mod_revision(_ALERTS + key_name(fp)) == revision
        ]
        if keys:
            self._txn([], [], keys)
        return len(keys)

    async def put_workload(self, workload: common_pb2.Workload) -> None:
        await asyncio.sleep(0)
        key = _WORKLOADS + key_name(workload.id)
        self._txn([], [(key, workload.SerializeToString())])

    async def get_workload(self, workload_id: str) -> common_pb2.Workload | None:
        await asyncio.sleep(0)
        entry = self._kv.get(_WORKLOADS + key_name(workload_id))
        return None if entry is None else _parsed(common_pb2.Workload, entry.value)

    async def list_workloads(self) -> list[common_pb2.Workload]:
        await asyncio.sleep(0)
        return [_parsed(common_pb2.Workload, entry.value) for _, entry in self._range(_WORKLOADS)]


if TYPE_CHECKING:
    from telltale.controller.store import Store

    _satisfies_store: Store = MemoryStore()
