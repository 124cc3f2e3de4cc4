"""The on-disk spool: bounds, loss accounting, reloading after a crash, disk errors, and sequence
numbers that survive a restart without any batch being recorded twice."""

from __future__ import annotations

import errno
import functools
import os
from pathlib import Path

import pytest
import trio
import trio.testing
from agentkit import CTL_A, SHOP, add_batch, config, send_three_acknowledge_one, welcome
from helpers import eventually as poll_until

from telltale.nodeagent import spool as spool_module
from telltale.nodeagent.daemon import Agent
from telltale.nodeagent.memlink import MemoryConnector
from telltale.nodeagent.spool import MEMORY_BATCHES, Spool
from telltale.v1 import agent_pb2, common_pb2

DEADLINE_S = 60.0
eventually = functools.partial(poll_until, within=DEADLINE_S)


def batch(pid: int, *, events: int = 1, pad: int = 0) -> agent_pb2.EventBatch:
    """A batch of `events` events of process `pid`; `pad` bytes of path make it bigger."""
    return agent_pb2.EventBatch(
        workloads=[SHOP],
        events=[
            common_pb2.Event(
                kind=common_pb2.EVENT_KIND_CONNECT,
                workload_id=SHOP.id,
                count=1,
                process=common_pb2.ProcessInfo(pid=pid, exe="x" * pad),
            )
            for _ in range(events)
        ],
    )


def pids(spool: Spool) -> list[int]:
    return [b.events[0].process.pid for b in spool.batches()]


def seqs(spool: Spool) -> list[int]:
    return [b.seq for b in spool.batches()]


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def filled(directory: Path, n: int, *, capacity: int = 4096, max_bytes: int = 2**28) -> Spool:
    spool = Spool(directory, capacity=capacity, max_bytes=max_bytes)
    for pid in range(1, n + 1):
        assert spool.append(batch(pid))
    return spool


def test_batches_survive_a_restart_with_their_numbers_and_contents(tmp_path: Path) -> None:
    spool = filled(tmp_path / "spool", 3)
    spool.renumber_from(10)  # met a controller: the numbers are the node's sequence now
    assert spool.append(batch(4))
    # No close(): the process was killed.
    again = Spool(tmp_path / "spool")
    assert seqs(again) == [10, 11, 12, 13]
    assert pids(again) == [1, 2, 3, 4]
    assert again.synced, "numbers given after meeting a controller are not provisional"
    assert again.next_seq == 14
    assert [w.id for w in next(again.batches()).workloads] == ["w-shop"]


def test_numbers_given_before_any_controller_stay_provisional_across_a_restart(tmp_path: Path) -> None:
    filled(tmp_path / "spool", 2)
    again = Spool(tmp_path / "spool")
    assert (seqs(again), again.synced) == ([1, 2], False)
    again.renumber_from(42)
    assert again.append(batch(3))
    third = Spool(tmp_path / "spool")
    assert (seqs(third), pids(third), third.synced) == ([42, 43, 44], [1, 2, 3], True)


def test_a_sequence_forgotten_by_an_emptied_spool_makes_new_numbers_provisional(tmp_path: Path) -> None:
    """Synced once, emptied, restarted: batches made before the next controller are provisional,
    even after one more restart (a stale "synced" must not make them look recorded)."""
    spool = filled(tmp_path / "spool", 3)
    spool.renumber_from(1)
    spool.ack(3)
    spool.close()
    restarted = filled(tmp_path / "spool", 2)
    assert not restarted.synced
    again = Spool(tmp_path / "spool")
    assert (seqs(again), again.synced) == ([1, 2], False)


def test_a_second_renumbering_composes_with_the_first(tmp_path: Path) -> None:
    spool = filled(tmp_path / "spool", 2)
    spool.renumber_from(10)
    assert spool.append(batch(3))
    spool.renumber_from(100)
    assert spool.append(batch(4))
    again = Spool(tmp_path / "spool")
    assert (seqs(again), pids(again)) == ([100, 101, 102, 103], [1, 2, 3, 4])


def test_acknowledged_batches_do_not_come_back_and_their_segments_go(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    spool = filled(directory, 5, max_bytes=2**20)
    spool.renumber_from(1)
    spool.ack(3)
    assert seqs(Spool(directory)) == [4, 5], "the acknowledgement was persisted (floor frame)"
    spool.ack(5)
    spool.close()
    assert segments(directory) == [], "nothing kept: no segment left"
    assert len(Spool(directory)) == 0


def test_batches_no_longer_cached_are_read_back_from_disk(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=2**20)
    spool.renumber_from(1)
    for pid in range(1, 301):
        assert spool.append(batch(pid, pad=400))
        if pid % 7 == 0:
            spool.ack(pid - 150)  # floor frames between the batches
    assert pids(spool) == list(range(145, 301))
    assert spool.counters.dropped_batches == 0


def test_disk_use_stays_bounded_while_batches_are_acknowledged(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory, max_bytes=2**20)  # segments of 64 KiB
    spool.renumber_from(1)
    for pid in range(1, 2001):
        spool.append(batch(pid, pad=500))
        spool.ack(pid - 1)
    assert len(segments(directory)) <= 2
    assert sum(p.stat().st_size for p in segments(directory)) <= 2 * spool.segment_bytes + 2048


def test_a_full_spool_drops_the_oldest_batch_and_counts_it(tmp_path: Path) -> None:
    spool = filled(tmp_path / "spool", 6, capacity=4)
    assert pids(spool) == [3, 4, 5, 6]
    counters = spool.counters
    assert (counters.dropped_batches, counters.dropped, counters.unsent_dropped) == (2, 2, 2)
    assert pids(Spool(tmp_path / "spool", capacity=4)) == [3, 4, 5, 6], "dropped batches stay dropped"


def test_the_byte_bound_drops_the_oldest_batches_too(tmp_path: Path) -> None:
    size = len(batch(1, pad=1000).SerializeToString())
    spool = Spool(tmp_path / "spool", max_bytes=3 * size + size // 2)
    for pid in range(1, 6):
        assert spool.append(batch(pid, pad=1000))
    assert pids(spool) == [3, 4, 5]
    assert spool.size_bytes <= spool.max_bytes
    assert spool.counters.dropped_batches == 2


def test_a_batch_without_events_never_pushes_out_one_with_events(tmp_path: Path) -> None:
    spool = filled(tmp_path / "spool", 2, capacity=2)
    assert not spool.append(agent_pb2.EventBatch(dropped_records=5))
    assert (seqs(spool), spool.next_seq, spool.counters.dropped_batches) == ([1, 2], 3, 0)


def test_a_reload_keeps_the_bounds_of_the_new_configuration(tmp_path: Path) -> None:
    filled(tmp_path / "spool", 5)
    smaller = Spool(tmp_path / "spool", capacity=2)
    assert pids(smaller) == [4, 5]
    assert smaller.counters.dropped_batches == 3


def test_a_torn_last_record_is_skipped_and_counted(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    filled(directory, 3)
    [segment] = segments(directory)
    data = segment.read_bytes()
    segment.write_bytes(data[:-7])  # the last write was cut short by a crash
    again = Spool(directory)
    assert pids(again) == [1, 2]
    assert again.counters.dropped_batches == 1
    assert again.append(batch(4)), "appending after a torn segment works"
    assert pids(Spool(directory)) == [1, 2, 4]


def test_a_damaged_record_or_a_garbage_file_never_stops_the_load(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    filled(directory, 3)
    [segment] = segments(directory)
    data = bytearray(segment.read_bytes())
    data[-3] ^= 0xFF  # a bit flip in the last batch
    segment.write_bytes(bytes(data))
    (directory / "0000000000000099.seg").write_bytes(b"not a spool segment")
    (directory / "meta.json").write_text("{not json")
    again = Spool(directory)
    assert pids(again) == [1, 2]
    assert again.counters.dropped_batches == 2
    assert not again.synced, "without meta.json the numbers are taken for provisional"


def test_a_batch_that_cannot_be_read_back_is_dropped_and_counted(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    filled(directory, 2)
    again = Spool(directory)  # nothing cached: reads go to the disk
    [segment] = segments(directory)
    segment.write_bytes(segment.read_bytes()[:20])
    assert again.read(1) is None
    assert (len(again), again.counters.dropped_batches, again.counters.dropped) == (1, 1, 1)


@pytest.mark.parametrize("failure", ["enospc", "short"])
def test_a_full_disk_keeps_batches_in_memory_within_a_bound_and_counts_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    directory = tmp_path / "spool"
    spool = filled(directory, 2)
    real_write = spool_module._write

    def full_disk(fd: int, data: bytes) -> int:
        if failure == "short":
            return real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spool_module, "_write", full_disk)
    for pid in range(3, 3 + MEMORY_BATCHES + 5):
        assert spool.append(batch(pid)), "the agent keeps working"
    kept = pids(spool)
    assert kept[:2] == [1, 2], "batches already on disk are not touched"
    assert kept[2:] == list(range(8, 3 + MEMORY_BATCHES + 5)), "the oldest in-memory ones went"
    assert spool.counters.dropped_batches == 5
    assert pids(Spool(directory)) == [1, 2], "a torn tail from the failed write is not loaded"

    monkeypatch.setattr(spool_module, "_write", real_write)
    assert spool.append(batch(1000))
    assert pids(Spool(directory)) == [1, 2, 1000], "once the disk has room, batches are durable again"


def test_an_unusable_directory_falls_back_to_memory_within_a_bound(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    spool = Spool(tmp_path / "file" / "spool")
    assert not spool.durable
    for pid in range(1, MEMORY_BATCHES + 3):
        assert spool.append(batch(pid))
    assert pids(spool) == list(range(3, MEMORY_BATCHES + 3))
    assert spool.counters.dropped_batches == 2


def test_in_memory_the_capacity_bounds_the_spool() -> None:
    spool = Spool(capacity=3)
    for pid in range(1, 6):
        spool.append(batch(pid))
    assert pids(spool) == [3, 4, 5]
    assert spool.counters.dropped_batches == 2


def test_a_serialized_batch_is_kept_as_given_and_numbered_by_the_spool(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory, capacity=2)
    stale = batch(1, events=3)
    stale.seq = 77  # a number inside the payload is not the batch's number
    assert spool.append_serialized(stale.SerializeToString(), events=3, dropped=4, malformed=5)
    assert spool.next_seq == 2
    [kept] = spool.batches()
    assert (kept.seq, len(kept.events), kept.workloads[0].id) == (1, 3, "w-shop")
    numbered = batch(2)
    assert spool.append(numbered)
    assert numbered.seq == 2, "append sets the number it gave"
    assert spool.append(batch(3)), "pushes the first batch out"
    counters = spool.counters
    assert (counters.dropped_batches, counters.dropped) == (1, 3), "its events, as given, are lost"
    assert (counters.unsent_dropped, counters.unsent_malformed) == (3 + 4, 5), "its reports come back"
    assert [b.seq for b in Spool(directory, capacity=2).batches()] == [2, 3]


def test_a_refused_batch_keeps_no_number() -> None:
    spool = Spool(capacity=1)
    assert spool.append(batch(1))
    refused = agent_pb2.EventBatch(dropped_records=1, seq=9)
    assert not spool.append(refused)
    assert (refused.seq, spool.next_seq) == (0, 2)


def frame_bounds(segment: Path, n: int) -> list[int]:
    """Offsets of the `n` equally sized batch frames of a segment written by `filled`, and its end."""
    size = segment.stat().st_size
    step = (size - len(spool_module.MAGIC)) // n
    return [len(spool_module.MAGIC) + i * step for i in range(n + 1)]


def damage(segment: Path, offset: int) -> None:
    data = bytearray(segment.read_bytes())
    data[offset] ^= 0xFF
    segment.write_bytes(bytes(data))


def test_a_damaged_frame_is_skipped_and_the_batches_after_it_are_kept(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    filled(directory, 5)
    [segment] = segments(directory)
    bounds = frame_bounds(segment, 5)
    damage(segment, bounds[2] - 3)  # in the payload of batch 2
    again = Spool(directory)
    assert pids(again) == [1, 3, 4, 5]
    assert (again.counters.dropped_batches, again.counters.dropped) == (1, 0), "its events are unknown"


def test_a_damaged_length_stops_the_reading_of_its_segment_and_counts_one_batch(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    filled(directory, 5)
    [segment] = segments(directory)
    damage(segment, frame_bounds(segment, 5)[1] + 1)  # the length field of batch 2
    again = Spool(directory)
    assert pids(again) == [1]
    assert again.counters.dropped_batches == 1


def test_each_damaged_frame_is_counted(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    filled(directory, 6)
    [segment] = segments(directory)
    bounds = frame_bounds(segment, 6)
    damage(segment, bounds[2] - 3)
    damage(segment, bounds[4] - 3)
    again = Spool(directory)
    assert (pids(again), again.counters.dropped_batches) == ([1, 3, 5, 6], 2)


def test_a_damaged_frame_already_acknowledged_is_no_loss(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    spool = filled(directory, 4)
    spool.renumber_from(1)
    spool.ack(2)
    [first, *_] = segments(directory)
    damage(first, frame_bounds(first, 4)[1] - 3)  # batch 1, acknowledged
    again = Spool(directory)
    assert (pids(again), again.counters.dropped_batches) == ([3, 4], 0)


def test_a_torn_segment_with_live_batches_is_counted_once_across_restarts(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    filled(directory, 3)
    [segment] = segments(directory)
    segment.write_bytes(segment.read_bytes()[:-7])
    assert Spool(directory).counters.dropped_batches == 1
    for _ in range(2):
        again = Spool(directory)
        assert (pids(again), again.counters.dropped_batches) == ([1, 2], 0)


def test_a_damaged_frame_is_counted_once_across_restarts(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    filled(directory, 4)
    [segment] = segments(directory)
    damage(segment, frame_bounds(segment, 4)[2] - 3)
    assert Spool(directory).counters.dropped_batches == 1
    again = Spool(directory)
    assert (pids(again), again.counters.dropped_batches) == ([1, 3, 4], 0)


def test_a_batch_dropped_when_read_back_is_not_counted_again_after_a_restart(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    filled(directory, 3)
    again = Spool(directory)  # nothing cached: reads go to the disk
    [segment] = segments(directory)
    damage(segment, frame_bounds(segment, 3)[2] - 3)
    assert again.read(2) is None
    assert again.counters.dropped_batches == 1
    third = Spool(directory)
    assert (pids(third), third.counters.dropped_batches) == ([1, 3], 0)


def test_a_batch_dropped_on_a_read_error_does_not_come_back_after_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch counted as lost is never delivered later: the frame was readable again, yet stays gone."""
    directory = tmp_path / "spool"
    filled(directory, 3)
    again = Spool(directory)
    monkeypatch.setattr(spool_module, "_read_payload", lambda *args: None)  # EIO, once
    assert again.read(2) is None
    monkeypatch.undo()
    assert again.counters.dropped_batches == 1
    third = Spool(directory)
    assert (pids(third), third.counters.dropped_batches) == ([1, 3], 0)
    assert [b.events[0].process.pid for b in spool_module.read_spool(directory)] == [1, 3]


def test_a_renumbering_that_cannot_be_saved_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "spool"
    spool = filled(directory, 2)
    real_write = spool_module._write

    def full_disk(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spool_module, "_write", full_disk)
    assert spool.renumber_from(10) is False
    assert (seqs(spool), spool.next_seq, spool.synced) == ([1, 2], 3, False)
    assert spool.append(batch(3))
    assert seqs(spool) == [1, 2, 3]

    monkeypatch.setattr(spool_module, "_write", real_write)
    assert spool.renumber_from(10) is True
    assert (seqs(spool), spool.synced) == ([10, 11, 12], True)
    again = Spool(directory)
    assert (seqs(again)[:2], again.synced) == ([10, 11], True), "a restart finds the saved numbering"


def test_appending_never_syncs_and_closed_segments_wait_for_sync_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    monkeypatch.setattr(spool_module, "_fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")))
    directory = tmp_path / "spool"
    spool = Spool(directory, max_bytes=2**20)  # segments of 64 KiB
    spool.renumber_from(1)
    synced.clear()  # meta.json is synced when written
    for pid in range(1, 301):
        assert spool.append(batch(pid, pad=500))
    *closed, last = [str(p) for p in segments(directory)]
    assert len(closed) >= 2
    assert synced == [], "no fsync while batches are appended"
    assert spool.pending_sync == len(closed)
    assert spool.sync_closed() == len(closed)
    assert synced == [*closed, str(directory)]
    assert (spool.pending_sync, spool.sync_closed()) == (0, 0)
    synced.clear()
    spool.close()
    assert synced == [last, str(directory)], "close syncs the segment being written"


@trio.testing.trio_test
async def test_sync_closed_runs_in_a_worker_thread_while_batches_are_appended(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory, max_bytes=2**20)
    synced = 0
    for pid in range(1, 601):
        assert spool.append(batch(pid, pad=500))
        if pid % 50 == 0:
            synced += await trio.to_thread.run_sync(spool.sync_closed)
    spool.close()
    assert synced >= 3
    assert pids(Spool(directory, max_bytes=2**20)) == list(range(1, 601))


# -- the daemon across restarts ----------------------------------------------------------------


@trio.testing.trio_test
async def test_a_restarted_agent_resends_what_was_not_recorded_and_nothing_that_was(tmp_path: Path) -> None:
    """Batches 1-3 were sent; the controller recorded 1-2 but only acknowledged 1 before the agent
    died: the next agent process sends 3 alone, then continues with 4."""
    connector = MemoryConnector()
    controller = connector.controller(CTL_A)
    first_agent = Agent(config(tmp_path), connector=connector)
    async with trio.open_nursery() as nursery:
        await nursery.start(first_agent.run)
        with trio.fail_after(DEADLINE_S):
            first = await controller.wait_session()
            await first.wait_for("hello")
            await send_three_acknowledge_one(first_agent, first)
        nursery.cancel_scope.cancel()  # killed: no close, no goodbye

    second_agent = Agent(config(tmp_path), connector=connector)
    assert len(second_agent.state.spool) == 2
    async with trio.open_nursery() as nursery:
        add_batch(second_agent, 4)  # made before the controller is reached: numbered 4 already
        await nursery.start(second_agent.run)
        with trio.fail_after(DEADLINE_S):
            second = await controller.wait_session(2)
            await second.wait_for("hello")
            second.push(welcome(last_seq=2))
            await second.wait_for("batch", 2)
        assert [b.seq for b in second.batches] == [3, 4]
        assert [b.events[0].process.pid for b in second.batches] == [3, 4]
        nursery.cancel_scope.cancel()


@trio.testing.trio_test
async def test_batches_spooled_before_any_controller_are_renumbered_after_a_restart(tmp_path: Path) -> None:
    connector = MemoryConnector()
    controller = connector.controller(CTL_A)
    first_agent = Agent(config(tmp_path), connector=connector)
    add_batch(first_agent, 1)
    add_batch(first_agent, 2)
    second_agent = Agent(config(tmp_path), connector=connector)  # the first one died
    async with trio.open_nursery() as nursery:
        await nursery.start(second_agent.run)
        with trio.fail_after(DEADLINE_S):
            session = await controller.wait_session()
            await session.wait_for("hello")
            session.push(welcome(last_seq=10))
            await session.wait_for("batch", 2)
        assert [b.seq for b in session.batches] == [11, 12], "provisional numbers continue the node's"
        nursery.cancel_scope.cancel()


@trio.testing.trio_test
async def test_a_full_spool_is_sent_in_a_window_not_all_at_once(tmp_path: Path) -> None:
    connector = MemoryConnector()
    controller = connector.controller(CTL_A)
    agent = Agent(config(tmp_path), connector=connector)
    for pid in range(1, 201):
        add_batch(agent, pid)
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.run)
        with trio.fail_after(DEADLINE_S):
            session = await controller.wait_session()
            await session.wait_for("hello")
            session.push(welcome(last_seq=0))
            await session.wait_for("batch", 64)
            await trio.testing.wait_all_tasks_blocked()
            assert len(session.batches) == 64, "no more than the window before an acknowledgement"
            session.push(agent_pb2.ConnectResponse(batch_ack=agent_pb2.BatchAck(seq=200)))
            await eventually(lambda: len(agent.state.spool) == 0, "the spool to empty")
        nursery.cancel_scope.cancel()


@trio.testing.trio_test
async def test_an_agent_sends_nothing_under_numbers_it_could_not_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With meta.json unwritable, the link is left and retried; batches go out only once the new
    numbering is saved, so a restart cannot number them differently."""
    connector = MemoryConnector()
    controller = connector.controller(CTL_A)
    agent = Agent(config(tmp_path), connector=connector)
    add_batch(agent, 1)
    add_batch(agent, 2)
    real_write = spool_module._write

    def full_disk(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spool_module, "_write", full_disk)
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.run)
        with trio.fail_after(DEADLINE_S):
            first = await controller.wait_session()
            await first.wait_for("hello")
            first.push(welcome(last_seq=10))
            await eventually(lambda: first.closed or bool(first.batches), "the agent to leave or send")
            assert first.batches == [], "sent under numbers a restart would not find"
            await first.wait_closed()
            monkeypatch.setattr(spool_module, "_write", real_write)
            second = await controller.wait_session(2)
            await second.wait_for("hello")
            second.push(welcome(last_seq=10))
            await second.wait_for("batch", 2)
        assert [b.seq for b in second.batches] == [11, 12]
        nursery.cancel_scope.cancel()
    assert [b.seq for b in spool_module.read_spool(tmp_path / "state" / "spool")] == [11, 12]
