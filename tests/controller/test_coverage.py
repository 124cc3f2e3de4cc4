"""Coverage gaps reported by workloads, recorded on the node and the workload (in-memory store)."""

from __future__ import annotations

import asyncio

from telltale.controller.coverage import (
    MAX_NODE_GAPS,
    MAX_WORKLOAD_GAPS,
    gap_texts,
    merged,
    record_workload,
)
from telltale.controller.ingest import apply_batch
from telltale.controller.memstore import MemoryStore
from telltale.controller.store import Versioned
from telltale.engine.builtin import DEFAULT_POLICY, load_builtin_policies
from telltale.engine.evaluate import PolicySet
from telltale.v1 import agent_pb2, common_pb2, inventory_pb2

NOW = 1_800_000_000 * 1_000_000_000
POLICIES = PolicySet(load_builtin_policies(), DEFAULT_POLICY, {})
SHOP = common_pb2.Workload(id="w-shop", application="shop", component="api", node_id="node-a")
R = common_pb2


def gap(path: str, *reasons: int, workload_id: str = SHOP.id) -> common_pb2.Event:
    return common_pb2.Event(
        kind=common_pb2.EVENT_KIND_COVERAGE_GAP,
        workload_id=workload_id,
        count=1,
        coverage_gap=common_pb2.CoverageGapDetail(path=path, reasons=reasons),
    )


def batch(seq: int, *events: common_pb2.Event) -> agent_pb2.EventBatch:
    return agent_pb2.EventBatch(seq=seq, workloads=[SHOP], events=events)


async def node_after(store: MemoryStore, *batches: agent_pb2.EventBatch) -> inventory_pb2.Node:
    node = inventory_pb2.Node(node_id="node-a")
    versioned = Versioned(node, await store.put_node(node, 0))
    for b in batches:
        versioned = (await apply_batch(store, b, versioned, POLICIES, NOW)).node
    stored = await store.get_node("node-a")
    assert stored is not None
    return stored.value


def test_each_reason_is_one_text() -> None:
    """A gap event becomes one text per reason, naming the program."""
    event = gap("/opt/tool", R.COVERAGE_GAP_REASON_STATIC, R.COVERAGE_GAP_REASON_GO)
    assert gap_texts(event) == ["static binary /opt/tool", "Go program /opt/tool"]
    stripped = gap("/bin/ls", R.COVERAGE_GAP_REASON_ENVIRONMENT_STRIPPED)
    assert gap_texts(stripped) == ["environment stripped for /bin/ls"]
    assert gap_texts(common_pb2.Event(kind=common_pb2.EVENT_KIND_EXEC)) == []


def test_node_lists_each_gap_once_with_its_workload() -> None:
    """The node record lists the gaps of every batch, each once, naming the workload."""

    async def body() -> inventory_pb2.Node:
        store = MemoryStore()
        static = gap("/usr/bin/foo", R.COVERAGE_GAP_REASON_STATIC)
        setuid = gap("/usr/bin/passwd", R.COVERAGE_GAP_REASON_SETUID)
        return await node_after(store, batch(1, static), batch(2, static, setuid), batch(3, static))

    node = asyncio.run(body())
    assert list(node.coverage_gaps) == [
        "static binary /usr/bin/foo (workload shop/api)",
        "set-user-ID program /usr/bin/passwd (workload shop/api)",
    ]
    assert node.last_seq == 3


def test_a_batch_sent_twice_adds_nothing_twice() -> None:
    """A re-sent batch is recognised by its sequence number: the gaps are not counted again."""

    async def body() -> inventory_pb2.Node:
        store = MemoryStore()
        b = batch(1, gap("/usr/bin/foo", R.COVERAGE_GAP_REASON_STATIC))
        return await node_after(store, b, b)

    assert list(asyncio.run(body()).coverage_gaps) == ["static binary /usr/bin/foo (workload shop/api)"]


def test_node_gaps_are_bounded_oldest_first_out() -> None:
    """Beyond MAX_NODE_GAPS the oldest gaps make room for new ones."""

    async def body() -> inventory_pb2.Node:
        store = MemoryStore()
        events = [gap(f"/bin/p{i}", R.COVERAGE_GAP_REASON_STATIC) for i in range(MAX_NODE_GAPS + 5)]
        return await node_after(store, batch(1, *events))

    gaps = list(asyncio.run(body()).coverage_gaps)
    assert len(gaps) == MAX_NODE_GAPS
    assert gaps[0] == "static binary /bin/p5 (workload shop/api)"
    assert gaps[-1] == f"static binary /bin/p{MAX_NODE_GAPS + 4} (workload shop/api)"


def test_merged_keeps_order_and_reports_no_change() -> None:
    """merged appends what is new, in order, and says None when nothing is."""
    assert merged(["a", "b"], ["b", "c", "c"], 10) == ["a", "b", "c"]
    assert merged(["a"], ["a"], 10) is None
    assert merged(["a", "b"], ["c"], 2) == ["b", "c"]


def test_workload_keeps_its_gaps_when_recorded_again() -> None:
    """A workload record written again (a new stream) keeps the gaps stored; new ones are added."""

    async def body() -> common_pb2.Workload | None:
        store = MemoryStore()
        await record_workload(store, SHOP, ["static binary /usr/bin/foo"])
        await record_workload(store, SHOP, [])
        await record_workload(store, SHOP, ["Go program /opt/svc", "static binary /usr/bin/foo"])
        return await store.get_workload(SHOP.id)

    stored = asyncio.run(body())
    assert stored is not None
    assert list(stored.coverage_gaps) == ["static binary /usr/bin/foo", "Go program /opt/svc"]
    assert stored.application == "shop"


def test_workload_gaps_are_bounded() -> None:
    """A workload holds at most MAX_WORKLOAD_GAPS gaps, the newest."""

    async def body() -> common_pb2.Workload | None:
        store = MemoryStore()
        texts = [f"static binary /bin/p{i}" for i in range(MAX_WORKLOAD_GAPS + 1)]
        await record_workload(store, SHOP, texts)
        return await store.get_workload(SHOP.id)

    stored = asyncio.run(body())
    assert stored is not None
    assert len(stored.coverage_gaps) == MAX_WORKLOAD_GAPS
    assert stored.coverage_gaps[0] == "static binary /bin/p1"
