"""The batcher with the spool (in memory, and once on disk): numbering, flushing, framing serialized
events, loss accounting, acknowledgements."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from telltale.nodeagent import batcher as batcher_module
from telltale.nodeagent.batcher import (
    LOSS_BATCH_MAX_BYTES,
    MAX_BATCH_AGE_S,
    MAX_BATCH_EVENTS,
    U64_MAX,
    Batcher,
    Counters,
)
from telltale.nodeagent.spool import Spool, read_spool
from telltale.v1 import agent_pb2, common_pb2

SHOP = common_pb2.Workload(id="w-shop", application="shop")
BILLING = common_pb2.Workload(id="w-billing", application="billing")


def event(pid: int = 1) -> common_pb2.Event:
    return common_pb2.Event(
        kind=common_pb2.EVENT_KIND_CONNECT,
        workload_id=SHOP.id,
        process=common_pb2.ProcessInfo(pid=pid),
        count=1,
    )


def spool_with(n_batches: int, *, capacity: int = 100, events_per_batch: int = 1) -> Spool:
    spool = Spool(capacity=capacity)
    batcher = Batcher(spool, max_events=events_per_batch)
    for i in range(n_batches * events_per_batch):
        batcher.add(event(i), SHOP, now=0.0)
    return spool


def batches(spool: Spool) -> list[agent_pb2.EventBatch]:
    return list(spool.batches())


def seqs(spool: Spool) -> list[int]:
    return [b.seq for b in batches(spool)]


def test_batches_are_numbered_consecutively_from_one() -> None:
    spool = Spool()
    batcher = Batcher(spool, max_events=2)
    for i in range(6):
        batcher.add(event(i), SHOP, now=0.0)
    assert seqs(spool) == [1, 2, 3]
    assert [[e.process.pid for e in b.events] for b in batches(spool)] == [[0, 1], [2, 3], [4, 5]]
    assert spool.next_seq == 4


def test_a_batch_closes_when_it_holds_256_events() -> None:
    assert MAX_BATCH_EVENTS == 256
    spool = Spool()
    batcher = Batcher(spool)
    for i in range(255):
        batcher.add(event(i), SHOP, now=0.0)
    assert not batches(spool)
    batcher.add(event(255), SHOP, now=0.0)
    assert len(batches(spool)) == 1
    assert len(batches(spool)[0].events) == 256
    batcher.add(event(256), SHOP, now=0.0)
    assert len(batches(spool)) == 1, "the 257th event opens a new batch"


def test_a_batch_is_due_once_older_than_the_maximum_age() -> None:
    batcher = Batcher(Spool())
    assert not batcher.due(1000.0), "an empty batcher is never due"
    batcher.add(event(), SHOP, now=0.0)
    batcher.add(event(), SHOP, now=0.09)
    assert not batcher.due(MAX_BATCH_AGE_S * 0.99)
    assert batcher.due(MAX_BATCH_AGE_S), "age counts from the batch's first event"
    batcher.flush()
    assert not batcher.due(1000.0)
    batcher.add(event(), SHOP, now=50.0)
    assert not batcher.due(50.0 + MAX_BATCH_AGE_S / 2), "a new batch starts its own clock"


def test_a_batch_carries_each_workload_it_refers_to_once() -> None:
    spool = Spool()
    batcher = Batcher(spool)
    batcher.add(event(), SHOP, now=0.0)
    batcher.add(event(), SHOP, now=0.0)
    batcher.add(event(), BILLING, now=0.0)
    batcher.add(event(), None, now=0.0)
    batcher.flush()
    assert sorted(w.id for w in batches(spool)[0].workloads) == ["w-billing", "w-shop"]
    assert len(batches(spool)[0].events) == 4


def test_flush_without_events_or_losses_makes_no_batch() -> None:
    spool = Spool()
    Batcher(spool).flush()
    assert not batches(spool)
    assert spool.next_seq == 1


def test_a_full_spool_drops_the_oldest_batch_and_counts_its_events() -> None:
    spool = Spool(capacity=2)
    batcher = Batcher(spool, max_events=3)
    for i in range(9):  # three full batches of 3 events
        batcher.add(event(i), SHOP, now=0.0)
    assert seqs(spool) == [2, 3]
    counters = spool.counters
    assert counters.dropped_batches == 1
    assert counters.dropped == 3
    assert [e.process.pid for e in batches(spool)[0].events] == [3, 4, 5], "the oldest batch went"
    assert all(b.dropped_records == 0 for b in batches(spool)), "the loss was not reported yet"


def test_the_next_batch_carries_the_loss_deltas_once() -> None:
    spool = Spool(capacity=2)
    batcher = Batcher(spool, max_events=1)
    for i in range(3):  # seq 3 pushes seq 1 out
        batcher.add(event(i), SHOP, now=0.0)
    spool.counters.count_malformed(5)
    batcher.add(event(3), SHOP, now=0.0)  # seq 4 reports seq 1's loss; pushes seq 2 out
    assert seqs(spool) == [3, 4]
    spool.ack(4)
    batcher.add(event(4), SHOP, now=0.0)  # seq 5 reports seq 2's loss
    batcher.add(event(5), SHOP, now=0.0)  # seq 6: nothing new was lost
    assert seqs(spool) == [5, 6]
    assert (spool.counters.dropped_batches, spool.counters.dropped, spool.counters.malformed) == (2, 2, 5)
    assert [(b.dropped_records, b.malformed_records) for b in batches(spool)] == [(1, 0), (0, 0)]


def test_the_loss_deltas_appear_in_the_batch_after_the_loss() -> None:
    spool = Spool(capacity=1)
    batcher = Batcher(spool, max_events=2)
    batcher.add(event(), SHOP, now=0.0)
    batcher.add(event(), SHOP, now=0.0)  # seq 1, two events
    spool.counters.count_malformed(3)
    batcher.add(event(), SHOP, now=0.0)
    batcher.add(event(), SHOP, now=0.0)  # seq 2 reports the 3 malformed records, pushes seq 1 out
    assert [(b.seq, b.dropped_records, b.malformed_records) for b in batches(spool)] == [(2, 0, 3)]
    spool.ack(2)
    batcher.add(event(), SHOP, now=0.0)
    batcher.flush()  # seq 3 reports the two events of seq 1
    assert [(b.seq, b.dropped_records, b.malformed_records) for b in batches(spool)] == [(3, 2, 0)]


def test_losses_reported_by_a_dropped_batch_are_carried_again() -> None:
    spool = Spool(capacity=1)
    batcher = Batcher(spool, max_events=1)
    batcher.add(event(), SHOP, now=0.0)  # seq 1
    spool.counters.count_malformed(2)
    batcher.add(event(), SHOP, now=0.0)  # seq 2 carries malformed=2; seq 1 is dropped
    batcher.add(event(), SHOP, now=0.0)  # seq 3 carries seq 1's loss; seq 2 is dropped
    batcher.add(event(), SHOP, now=0.0)  # seq 4; seq 3 is dropped
    batcher.flush()
    counters = spool.counters
    # Every counted loss is either reported by a batch still kept or waits for the next batch.
    assert sum(b.malformed_records for b in batches(spool)) + counters.unsent_malformed == counters.malformed
    assert sum(b.dropped_records for b in batches(spool)) + counters.unsent_dropped == counters.dropped


def test_flush_reports_losses_even_without_events() -> None:
    counters = Counters()
    spool = Spool(counters=counters)
    counters.count_dropped(4)
    counters.count_malformed(1)
    Batcher(spool).flush()
    assert len(batches(spool)) == 1
    batch = batches(spool)[0]
    assert (len(batch.events), batch.dropped_records, batch.malformed_records) == (0, 4, 1)
    assert (counters.unsent_dropped, counters.unsent_malformed) == (0, 0)
    assert (counters.dropped, counters.malformed) == (4, 1), "the totals are kept"


def test_ack_forgets_batches_up_to_and_including_seq() -> None:
    spool = spool_with(5)
    spool.ack(3)
    assert seqs(spool) == [4, 5]
    spool.ack(2)
    assert seqs(spool) == [4, 5], "an old ack changes nothing"
    spool.ack(99)
    assert seqs(spool) == []
    assert spool.next_seq == 6, "acks never rewind numbering"


def test_renumber_from_continues_a_sequence_learned_from_the_controller() -> None:
    spool = spool_with(3)
    spool.renumber_from(42)
    assert seqs(spool) == [42, 43, 44]
    Batcher(spool, max_events=1).add(event(), SHOP, now=0.0)
    assert seqs(spool) == [42, 43, 44, 45]


def test_renumber_from_on_an_empty_spool_sets_the_next_number() -> None:
    spool = Spool()
    spool.renumber_from(7)
    Batcher(spool, max_events=1).add(event(), SHOP, now=0.0)
    assert seqs(spool) == [7]


def test_seqs_from_lists_kept_batch_numbers_from_seq_on() -> None:
    spool = spool_with(5)
    spool.ack(2)
    assert spool.seqs_from(1, 100) == [3, 4, 5]
    assert spool.seqs_from(4, 100) == [4, 5]
    assert spool.seqs_from(3, 2) == [3, 4], "at most `limit` of them"
    assert spool.seqs_from(6, 100) == []
    assert (spool.count_below(5), spool.count_below(1)) == (2, 0)


@trio.testing.trio_test
async def test_wait_beyond_returns_once_such_a_batch_exists() -> None:
    spool = spool_with(2)
    batcher = Batcher(spool, max_events=1)
    done = trio.Event()

    async def waiter() -> None:
        await spool.wait_beyond(3)
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()
        batcher.add(event(), SHOP, now=0.0)
        with trio.fail_after(5):
            await done.wait()
    await spool.wait_beyond(1)  # already there: returns at once


def test_a_full_spool_refuses_a_batch_without_events_and_uses_no_number() -> None:
    spool = spool_with(2, capacity=2)
    assert spool.full
    assert not spool.append(agent_pb2.EventBatch(dropped_records=1))
    assert seqs(spool) == [1, 2]
    assert spool.next_seq == 3
    assert spool.counters.dropped_batches == 0
    assert spool.append(agent_pb2.EventBatch(events=[event()])), "a batch with events still goes in"
    assert seqs(spool) == [2, 3]
    assert spool.counters.dropped_batches == 1


def test_losses_wait_while_the_spool_is_full_and_go_out_with_the_next_batch_that_fits() -> None:
    spool = Spool(capacity=2)
    batcher = Batcher(spool, max_events=1)
    for i in range(3):  # seq 1 is pushed out: one event lost
        batcher.add(event(i), SHOP, now=0.0)
    counters = spool.counters
    assert (counters.dropped_batches, counters.unsent_dropped) == (1, 1)
    assert not batcher.due(1000.0), "a loss-only batch would push an event batch out"
    batcher.flush()
    assert seqs(spool) == [2, 3], "no batch was made, none was dropped"
    assert (counters.dropped_batches, counters.unsent_dropped) == (1, 1), "the count is still pending"
    batcher.add(event(3), SHOP, now=0.0)  # seq 4 has events: it may push seq 2 out, and carries the loss
    assert seqs(spool) == [3, 4]
    assert batches(spool)[-1].dropped_records == 1
    assert counters.unsent_dropped == 1, "seq 2's event, lost just now"
    spool.ack(4)
    assert batcher.due(1000.0), "with room again, the losses alone make a batch"
    batcher.flush()
    assert [(b.seq, len(b.events), b.dropped_records) for b in batches(spool)] == [(5, 0, 1)]


def test_counters_saturate_at_the_uint64_maximum() -> None:
    counters = Counters()
    for _ in range(3):
        counters.count_dropped(2**63)
        counters.count_malformed(2**63)
    assert (counters.dropped, counters.unsent_dropped) == (U64_MAX, U64_MAX)
    assert (counters.malformed, counters.unsent_malformed) == (U64_MAX, U64_MAX)
    lost = agent_pb2.EventBatch(events=[event()], dropped_records=U64_MAX, malformed_records=U64_MAX)
    counters.dropped_batches = U64_MAX
    counters.count_dropped_batch(lost)
    assert (counters.dropped_batches, counters.unsent_dropped, counters.unsent_malformed) == (U64_MAX,) * 3
    agent_pb2.Heartbeat(
        dropped_records=counters.dropped,
        malformed_records=counters.malformed,
        dropped_batches=counters.dropped_batches,
    )  # fits: does not raise


def test_a_batch_reporting_saturated_losses_fits_its_uint64_fields() -> None:
    spool = Spool()
    spool.counters.count_dropped(2**64 + 5)
    spool.counters.count_malformed(2**65)
    Batcher(spool).flush()
    assert (batches(spool)[0].dropped_records, batches(spool)[0].malformed_records) == (U64_MAX, U64_MAX)


def test_runs_of_serialized_events_fill_batches_in_order_across_batch_boundaries() -> None:
    spool = Spool()
    batcher = Batcher(spool, max_events=4)
    batcher.extend([event(i).SerializeToString() for i in range(3)], SHOP, now=0.0)
    batcher.extend([event(i).SerializeToString() for i in range(3, 10)], BILLING, now=0.0)
    assert [[e.process.pid for e in b.events] for b in batches(spool)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [sorted(w.id for w in b.workloads) for b in batches(spool)] == [
        ["w-billing", "w-shop"],
        ["w-billing"],
    ], "a run spanning batches puts its workload in each of them"
    batcher.extend([], SHOP, now=0.0)
    assert len(batches(spool)) == 2, "an empty run changes nothing"
    batcher.flush()
    assert [e.process.pid for e in batches(spool)[-1].events] == [8, 9]
    assert [w.id for w in batches(spool)[-1].workloads] == ["w-billing"]


def test_an_empty_run_neither_opens_a_batch_nor_names_its_workload() -> None:
    spool = Spool()
    batcher = Batcher(spool)
    batcher.extend([], SHOP, now=0.0)
    assert batcher.opened_at is None
    batcher.add(event(), BILLING, now=1.0)
    batcher.flush()
    assert [w.id for w in batches(spool)[0].workloads] == ["w-billing"]


def test_events_added_as_messages_or_bytes_come_back_equal() -> None:
    """The batch is written by framing the events' bytes: a merged prefix and body parse as one."""
    spool = Spool()
    batcher = Batcher(spool)
    split = common_pb2.Event(workload_id=SHOP.id, process=common_pb2.ProcessInfo(pid=7, exe="/bin/app"))
    rest = common_pb2.Event(kind=common_pb2.EVENT_KIND_CONNECT, process=common_pb2.ProcessInfo(tid=8))
    batcher.add(event(1), SHOP, now=0.0)
    batcher.add(split.SerializeToString() + rest.SerializeToString(), SHOP, now=0.0)
    batcher.flush()
    merged = common_pb2.Event()
    merged.MergeFrom(split)
    merged.MergeFrom(rest)
    assert list(batches(spool)[0].events) == [event(1), merged]


def test_the_python_event_framing_is_what_protobuf_and_the_native_one_write() -> None:
    events = [event(i).SerializeToString() for i in range(3)] + [b"", b"x" * 300]
    framed = batcher_module._join_events_py(events)
    assert (
        framed
        == agent_pb2.EventBatch(events=[common_pb2.Event.FromString(e) for e in events]).SerializeToString()
    )
    assert framed == batcher_module.join_events(events), "the framing the batcher uses (native if built)"


def test_batches_reach_a_spool_on_disk_with_their_counts(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    batcher = Batcher(spool, max_events=2)
    spool.counters.count_malformed(2)
    batcher.extend([event(i).SerializeToString() for i in range(5)], SHOP, now=0.0)
    batcher.flush()
    spool.close()
    kept = read_spool(tmp_path / "spool")
    assert [(b.seq, len(b.events), b.malformed_records) for b in kept] == [(1, 2, 2), (2, 2, 0), (3, 1, 0)]
    assert [e.process.pid for b in kept for e in b.events] == list(range(5))
    reloaded = Spool(tmp_path / "spool", capacity=1)  # loading drops the two oldest, by their counts
    assert (reloaded.counters.dropped_batches, reloaded.counters.dropped) == (2, 4)
    assert reloaded.counters.unsent_malformed == 2, "the dropped batch's report is carried again"


def test_a_spool_that_is_not_full_keeps_any_batch_of_losses_only() -> None:
    """`full` agrees with what the spool accepts: while it is False, a batch of losses only is kept."""
    largest = agent_pb2.EventBatch(dropped_records=U64_MAX, malformed_records=U64_MAX)
    assert len(largest.SerializeToString()) == LOSS_BATCH_MAX_BYTES
    not_full = 0
    for held in range(960, 1001):
        spool = Spool(max_bytes=1000)
        assert spool.append_serialized(b"x" * held, events=1, dropped=0, malformed=0)
        if not spool.full:
            not_full += 1
            losses = agent_pb2.EventBatch(dropped_records=U64_MAX, malformed_records=U64_MAX)
            assert spool.append(losses), f"{held} bytes held: not full, yet refused"
    assert not_full, "some of these spools have room"


def test_losses_refused_by_a_nearly_full_spool_stay_pending() -> None:
    spool = Spool(capacity=100, max_bytes=1000)
    assert spool.append_serialized(b"x" * 999, events=1, dropped=0, malformed=0)
    spool.counters.count_dropped(5)
    batcher = Batcher(spool)
    assert not batcher.due(1000.0), "no room for a batch of losses: not due"
    batcher.flush()
    assert (len(spool), spool.counters.unsent_dropped, spool.next_seq) == (1, 5, 2)


class RefusingSpool:
    """A sink that claims room but refuses every batch without events; `lost_meanwhile` records are
    counted as dropped while it is asked."""

    def __init__(self) -> None:
        self.counters = Counters()
        self.lost_meanwhile = 0

    @property
    def full(self) -> bool:
        return False

    def append_serialized(self, payload: bytes, *, events: int, dropped: int, malformed: int) -> bool:
        self.counters.count_dropped(self.lost_meanwhile)
        return bool(events)


def test_losses_refused_by_the_sink_are_added_back_and_saturate() -> None:
    sink = RefusingSpool()
    sink.counters.count_dropped(7)
    sink.counters.count_malformed(2)
    batcher = Batcher(sink)
    batcher.flush()
    assert (sink.counters.unsent_dropped, sink.counters.unsent_malformed) == (7, 2)
    sink.lost_meanwhile = U64_MAX - 3
    batcher.flush()
    assert sink.counters.unsent_dropped == U64_MAX, "held at the uint64 maximum"
    assert sink.counters.unsent_malformed == 2
