"""The controller's shared state: the Store interface, its types, and the key layout.

`EtcdStore` (etcdstore.py) keeps it in etcd; `MemoryStore` (memstore.py) is the in-memory twin.

Every key lives under one prefix (default ``/telltale/v1/``):

    policy/policies/<name>          current Policy (protobuf)
    policy/default                  name of the default policy
    policy/assignments/<app>/<comp> policy name ("" component = the whole application)
    policy/generation               touched by every policy-state change, so its mod revision is
                                    the highest under policy/: the policy-state revision
    policy-history/<name>/<rev>     every revision of every policy (rev zero-padded to 12 digits)
    alerts/<fingerprint>            Alert (protobuf)
    nodes/<node_id>                 Node (protobuf)
    workloads/<id>                  Workload (protobuf)
    node-live/<node_id>             id of the controller holding the node's stream, attached to
                                    that controller's lease: gone when the replica dies
    controllers/<controller_id>     a replica's registration (ControllerRecord), on its lease
    election/leader                 id of the replica that runs the singleton duties, on its lease

Names are percent-encoded inside keys. Values are serialized protobuf messages, except the
default policy and assignments, which are UTF-8 names.

Every policy-state write is one etcd transaction that also puts ``policy/generation``, so
every change moves the policy-state revision that watches report, and a compare on the
generation key's mod revision detects any change at all since a read (deleting a policy relies
on it: the policy must still be neither the default nor assigned when the delete commits).

A deleted policy's history stays under ``policy-history/<name>/`` until a policy of the same
name is created again: that creation removes the former policy's history in the same
transaction, so a name's history always belongs to one policy.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar
from urllib.parse import quote

from telltale.v1 import alert_pb2, common_pb2, inventory_pb2, policy_pb2

DEFAULT_PREFIX = "/telltale/v1/"
# etcd refuses transactions of more than --max-txn-ops operations (128 by default); one is the node.
MAX_BATCH_ALERTS = 100
# etcd checks --max-txn-ops (128 by default) against each list of a transaction separately: the
# compares, the success operations and the failure operations may each hold up to 128 (etcd's
# checkTxnRequest takes the largest of the three). commit_records compares, puts and (on failure)
# reads each key once, so each list is as long as the number of keys; 100 leaves room for an
# operator's lower limit and keeps a transaction of alerts (a few KB each) well under etcd's
# request size limit (--max-request-bytes, 1.5 MiB by default).
MAX_TXN_KEYS = 100


class Conflict(Exception):
    """A compare-and-swap lost: someone else changed the key first."""


class Stale(Conflict):
    """commit_records lost: the keys it compared that had moved, with their current values
    (None: the key does not exist now), read in the same transaction."""

    def __init__(
        self,
        message: str,
        nodes: dict[str, Versioned[inventory_pb2.Node] | None],
        alerts: dict[str, Versioned[alert_pb2.Alert] | None],
    ) -> None:
        super().__init__(message)
        self.nodes = nodes
        self.alerts = alerts


class Absent(Exception):
    """A write depends on a policy that does not exist (checked in the write's transaction)."""


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
class Replaced:
    """What a write of a name replaced ("" = nothing) and its store revision (0 = nothing written)."""

    previous: str
    revision: int


@dataclass(frozen=True, slots=True)
class PolicyState:
    """Everything that decides which policy applies to a workload, at one revision.

    `revision` is the policy-state revision: the mod revision of the generation key."""

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

        A name already taken by a custom policy is left to it (an upgrade never overwrites an
        operator's policy). Returns the names written."""
        ...

    async def create_policy(self, policy: policy_pb2.Policy) -> int:
        """Store a new policy; raises Conflict if the name exists. Returns the store revision.

        History left by a deleted policy of the same name is removed in the same transaction."""
        ...

    async def update_policy(self, policy: policy_pb2.Policy, expected_mod_revision: int) -> int:
        """Replace a policy if its key is still at `expected_mod_revision`; raises Conflict otherwise."""
        ...

    async def get_policy(self, name: str) -> Versioned[policy_pb2.Policy] | None:
        """Read one policy."""
        ...

    async def delete_policy(self, name: str, expected_state_revision: int) -> int:
        """Delete a policy if the policy state is still at `expected_state_revision`.

        The caller decides from a policy_state() read that the policy may go (not the default,
        not assigned); the transaction compares the generation key, so any policy-state change
        since that read makes it fail. The policy's history is kept. Returns the store revision.
        Raises Absent when no such policy exists, Conflict when the state moved on.
        """
        ...

    async def set_default_policy(self, name: str) -> Replaced:
        """Make `name` the default policy; returns the former default.

        Raises Absent (and writes nothing) unless that policy exists when the write commits."""
        ...

    async def assign_policy(self, application: str, component: str, policy: str) -> Replaced:
        """Assign `policy` to an application ("" component) or one component; returns the former policy.

        Raises Absent (and writes nothing) unless that policy exists when the write commits."""
        ...

    async def unassign_policy(self, application: str, component: str) -> Replaced:
        """Remove an assignment; returns the policy it named. Writes nothing when there is none."""
        ...

    async def get_policy_revision(self, name: str, revision: int) -> policy_pb2.Policy | None:
        """Read one revision of a policy from its history (also after the policy was deleted)."""
        ...

    async def list_policy_revisions(
        self, name: str, *, before: int = 0, limit: int = 0
    ) -> list[policy_pb2.Policy]:
        """The history of a policy, newest first: revisions below `before` (0 = from the newest),
        at most `limit` of them (0 = all). Empty when the name has no history."""
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

    def watch_alerts(self, after_revision: int) -> AsyncIterator[list[AlertChange]]:
        """Yield the alert changes after `after_revision`, one list per store revision, in order."""
        ...

    async def get_node(self, node_id: str) -> Versioned[inventory_pb2.Node] | None:
        """Read one node."""
        ...

    async def put_node(self, node: inventory_pb2.Node, expected_mod_revision: int) -> int:
        """Write a node record if its key is at `expected_mod_revision` (0 = must not exist).

        Returns the new mod revision; raises Conflict."""
        ...

    async def commit_batch(
        self,
        node: inventory_pb2.Node,
        expected_node_revision: int,
        alerts: Sequence[tuple[alert_pb2.Alert, int]],
    ) -> int:
        """Write alerts and the node record (which holds the batch's sequence number) atomically.

        Each write is conditional on the revision it was read at (0 = absent). Returns the node's
        new mod revision; raises Conflict when anything changed, and then nothing is written.
        Raises ValueError when more alerts are given than MAX_BATCH_ALERTS.
        """
        ...

    async def commit_records(
        self,
        nodes: Sequence[tuple[inventory_pb2.Node, int]],
        alerts: Sequence[tuple[alert_pb2.Alert, int]],
    ) -> int:
        """Write node records and alerts atomically, each if its key is still at the mod revision
        it was read at (0 = absent); returns the store revision of the write.

        Raises Stale (a Conflict) when any key moved, and then nothing is written: it carries the
        current value of every key that moved, so the caller can retry without reading again.
        Raises ValueError when no key or more than MAX_TXN_KEYS keys are given, or a key twice.
        """
        ...

    async def list_nodes(self) -> list[inventory_pb2.Node]:
        """Every node."""
        ...

    async def list_node_records(self) -> list[Versioned[inventory_pb2.Node]]:
        """Every node with its mod revision."""
        ...

    async def put_node_live(self, node_id: str, controller_id: str, lease: int) -> None:
        """Say that `controller_id` holds the node's stream, for as long as `lease` lives."""
        ...

    async def delete_node_live(self, node_id: str, controller_id: str) -> None:
        """Withdraw the liveness key, if `controller_id` still holds it (a newer stream elsewhere
        keeps its own)."""
        ...

    async def live_nodes(self) -> dict[str, str]:
        """Node id -> controller id of every liveness key."""
        ...

    def watch_node_live(self) -> AsyncIterator[str]:
        """From now on, yield the node id of each liveness key deleted (or expired)."""
        ...

    async def expire_node(self, node: inventory_pb2.Node, expected_mod_revision: int) -> bool:
        """Write `node` (marked offline by the caller) if its key is still at
        `expected_mod_revision` and it has no liveness key; False, writing nothing, otherwise
        (a stream re-registered it meanwhile)."""
        ...

    async def delete_alerts(self, alerts: Sequence[tuple[str, int]]) -> int:
        """Delete alerts (fingerprint, mod revision) in one transaction, each only if still at that
        revision (an alert updated meanwhile stays). Returns how many went.
        Raises ValueError when more are given than MAX_BATCH_ALERTS."""
        ...

    async def put_workload(self, workload: common_pb2.Workload) -> None:
        """Record a workload."""
        ...

    async def get_workload(self, workload_id: str) -> common_pb2.Workload | None:
        """Read one workload."""
        ...

    async def list_workloads(self) -> list[common_pb2.Workload]:
        """Every workload."""
        ...


class NodeLiveness(Protocol):
    """Where a replica says which nodes' streams it holds (membership.Membership on etcd: a
    liveness key on the replica's lease, so the claim dies with the replica)."""

    async def node_connected(self, node_id: str) -> object:
        """This replica now holds a stream of `node_id`; returns the stream's handle."""
        ...

    async def node_disconnected(self, handle: object) -> None:
        """The stream of `handle` (node_connected's) ended; call it for every stream."""
        ...


def key_name(key_part: str) -> str:
    return quote(key_part, safe="")


def with_revision(policy: policy_pb2.Policy, revision: int) -> policy_pb2.Policy:
    copy = policy_pb2.Policy()
    copy.CopyFrom(policy)
    copy.revision = revision
    return copy


def same_content(a: policy_pb2.Policy, b: policy_pb2.Policy) -> bool:
    """Equal apart from revision and write metadata."""
    a2, b2 = policy_pb2.Policy(), policy_pb2.Policy()
    a2.CopyFrom(a)
    b2.CopyFrom(b)
    for p in (a2, b2):
        p.ClearField("revision")
        p.ClearField("updated_at")
        p.ClearField("updated_by")
    return a2.SerializeToString(deterministic=True) == b2.SerializeToString(deterministic=True)
