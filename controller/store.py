"""The controller's shared state in etcd, behind a small interface.

Every key lives under one prefix (default ``/telltale/v1/``):

    policy/policies/<name>          current Policy (protobuf)
    policy/default                  name of the default policy
    policy/assignments/<app>/<comp> policy name ("" component = the whole application)
    policy/generation               touched by every policy-state change, so the highest
                                    mod revision under policy/ is the policy-state revision
    policy-history/<name>/<rev>     every revision of every policy
    alerts/<fingerprint>            Alert (protobuf)
    nodes/<node_id>                 Node (protobuf)
    workloads/<id>                  Workload (protobuf)

Names are percent-encoded inside keys. Values are serialized protobuf messages, except the
default policy and assignments, which are UTF-8 names.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar
from urllib.parse import quote, unquote

import aetcd

from telltale.v1 import alert_pb2, common_pb2, inventory_pb2, policy_pb2

DEFAULT_PREFIX = "/telltale/v1/"


class Conflict(Exception):
    """A compare-and-swap lost: someone else changed the key first."""


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Versioned(Generic[T]):
    """A stored value with the store revision of its last change (0 = absent)."""

    value: T
    mod_revision: int


@dataclass(frozen=True, slots=True)
class AlertChange:
    """One change of an alert key: `alert` is None for a deletion (only `fingerprint` is known)."""

    fingerprint: str
    alert: alert_pb2.Alert | None
    revision: int
    created: bool


@dataclass(frozen=True, slots=True)
class PolicyState:
    """Everything that decides which policy applies to a workload, at one revision."""

    policies: dict[str, policy_pb2.Policy]
    default_policy: str
    assignments: dict[tuple[str, str], str]
    revision: int


class Store(Protocol):
    """What the controller needs from its shared state."""

    async def policy_state(self) -> PolicyState:
        """Read policies, default and assignments consistently."""
        ...

    def watch_policy_state(self, after_revision: int) -> AsyncIterator[int]:
        """Yield the revision of each policy-state change after `after_revision`."""
        ...

    async def seed_policies(self, policies: list[policy_pb2.Policy], default_policy: str) -> list[str]:
        """Write built-in policies that are absent or differ; set the default if none.

        Returns the names written."""
        ...

    async def create_policy(self, policy: policy_pb2.Policy) -> int:
        """Store a new policy; raises Conflict if the name exists. Returns the store revision."""
        ...

    async def update_policy(self, policy: policy_pb2.Policy, expected_mod_revision: int) -> int:
        """Replace a policy if its key is still at `expected_mod_revision`; raises Conflict otherwise."""
        ...

    async def get_alert(self, fingerprint: str) -> Versioned[alert_pb2.Alert] | None:
        """Read one alert."""
        ...

    async def put_alert(self, alert: alert_pb2.Alert, expected_mod_revision: int) -> int:
        """Write an alert if its key is at `expected_mod_revision` (0 = must not exist); raises Conflict."""
        ...

    async def list_alerts(self) -> tuple[list[Versioned[alert_pb2.Alert]], int]:
        """Every alert, and the store revision the listing was read at."""
        ...

    def watch_alerts(self, after_revision: int) -> AsyncIterator[AlertChange]:
        """Yield alert changes after `after_revision`, in revision order."""
        ...

    async def get_node(self, node_id: str) -> Versioned[inventory_pb2.Node] | None:
        """Read one node."""
        ...

    async def put_node(self, node: inventory_pb2.Node) -> None:
        """Write a node record."""
        ...

    async def list_nodes(self) -> list[inventory_pb2.Node]:
        """Every node."""
        ...

    async def put_workload(self, workload: common_pb2.Workload) -> None:
        """Record a workload."""
        ...

    async def list_workloads(self) -> list[common_pb2.Workload]:
        """Every workload."""
        ...


def _name(key_part: str) -> str:
    return quote(key_part, safe="")


class EtcdStore:
    """Store on an etcd cluster through aetcd."""

    def __init__(self, client: aetcd.Client, prefix: str = DEFAULT_PREFIX) -> None:
        self._client = client
        self._prefix = prefix

    # -- keys ------------------------------------------------------------------------------
    def _key(self, *parts: str) -> bytes:
        return (self._prefix + "/".join(parts)).encode()

    def _policy_key(self, name: str) -> bytes:
        return self._key("policy", "policies", _name(name))

    def _history_key(self, name: str, revision: int) -> bytes:
        return self._key("policy-history", _name(name), f"{revision:012d}")

    def _generation_put(self) -> object:
        return self._client.transactions.put(self._key("policy", "generation"), b"")

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
                if _same_content(stored, builtin):
                    continue
                policy = _with_revision(builtin, stored.revision + 1)
                compare = [txn.mod(key) == current.mod_revision]
            else:
                policy = _with_revision(builtin, 1)
                compare = [txn.create(key) == 0]
            data = policy.SerializeToString()
            ok, _ = await self._client.transaction(
                compare=compare,
                success=[
                    txn.put(key, data),
                    txn.put(self._history_key(policy.name, policy.revision), data),
                    self._generation_put(),
                ],
                failure=[],
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
        key = self._policy_key(policy.name)
        data = policy.SerializeToString()
        txn = self._client.transactions
        ok, responses = await self._client.transaction(
            compare=[txn.create(key) == 0],
            success=[
                txn.put(key, data),
                txn.put(self._history_key(policy.name, policy.revision), data),
                self._generation_put(),
            ],
            failure=[],
        )
        if not ok:
            raise Conflict(f"policy {policy.name!r} already exists")
        return int(responses[0].response_put.header.revision)

    async def update_policy(self, policy: policy_pb2.Policy, expected_mod_revision: int) -> int:
        key = self._policy_key(policy.name)
        data = policy.SerializeToString()
        txn = self._client.transactions
        ok, responses = await self._client.transaction(
            compare=[txn.mod(key) == expected_mod_revision],
            success=[
                txn.put(key, data),
                txn.put(self._history_key(policy.name, policy.revision), data),
                self._generation_put(),
            ],
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

    # -- alerts ----------------------------------------------------------------------------
    def _alert_key(self, fingerprint: str) -> bytes:
        return self._key("alerts", _name(fingerprint))

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

    async def watch_alerts(self, after_revision: int) -> AsyncIterator[AlertChange]:
        base = self._key("alerts") + b"/"
        watch = await self._client.watch_prefix(base, start_revision=after_revision + 1)
        try:
            async for event in watch:
                fingerprint = unquote(event.kv.key[len(base) :].decode())
                revision = int(event.kv.mod_revision)
                if event.kind == "DELETE":
                    yield AlertChange(fingerprint, None, revision, created=False)
                    continue
                alert = alert_pb2.Alert()
                alert.ParseFromString(event.kv.value)
                alert.revision = revision
                yield AlertChange(fingerprint, alert, revision, created=event.kv.version == 1)
        finally:
            await watch.cancel()

    # -- nodes and workloads ---------------------------------------------------------------
    async def get_node(self, node_id: str) -> Versioned[inventory_pb2.Node] | None:
        kv = await self._client.get(self._key("nodes", _name(node_id)))
        if kv is None:
            return None
        node = inventory_pb2.Node()
        node.ParseFromString(kv.value)
        return Versioned(node, int(kv.mod_revision))

    async def put_node(self, node: inventory_pb2.Node) -> None:
        await self._client.put(self._key("nodes", _name(node.node_id)), node.SerializeToString())

    async def list_nodes(self) -> list[inventory_pb2.Node]:
        result = await self._client.get_prefix(self._key("nodes") + b"/")
        nodes = []
        for kv in result:
            node = inventory_pb2.Node()
            node.ParseFromString(kv.value)
            nodes.append(node)
        return nodes

    async def put_workload(self, workload: common_pb2.Workload) -> None:
        await self._client.put(self._key("workloads", _name(workload.id)), workload.SerializeToString())

    async def list_workloads(self) -> list[common_pb2.Workload]:
        result = await self._client.get_prefix(self._key("workloads") + b"/")
        workloads = []
        for kv in result:
            workload = common_pb2.Workload()
            workload.ParseFromString(kv.value)
            workloads.append(workload)
        return workloads


def _with_revision(policy: policy_pb2.Policy, revision: int) -> policy_pb2.Policy:
    copy = policy_pb2.Policy()
    copy.CopyFrom(policy)
    copy.revision = revision
    return copy


def _same_content(a: policy_pb2.Policy, b: policy_pb2.Policy) -> bool:
    """Equal apart from revision and write metadata."""
    a2, b2 = policy_pb2.Policy(), policy_pb2.Policy()
    a2.CopyFrom(a)
    b2.CopyFrom(b)
    for p in (a2, b2):
        p.ClearField("revision")
        p.ClearField("updated_at")
        p.ClearField("updated_by")
    return a2.SerializeToString(deterministic=True) == b2.SerializeToString(deterministic=True)
