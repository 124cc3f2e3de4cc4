"""The agent's bounded spool of unacknowledged batches, kept on disk so a restart loses nothing.

Every batch gets the next sequence number and stays until the controller acknowledges it. The
spool is bounded by a number of batches and by their serialized size; making room drops the oldest
batch and counts its events as lost (`Counters.count_dropped_batch_counts`). A batch that carries
only loss counts never pushes out a batch with events: it is refused, and its counts wait.

On disk (`directory`): append-only segment files `<id>.seg` (a magic string, then frames) plus
`meta.json`. Segments rather than one file per batch: one `write()` per batch, no file created or
renamed per batch, and freeing space is unlinking a segment once none of its batches is kept. A
frame is `length, crc32` followed by `kind, seq, events, dropped, malformed, payload`, where the
payload is the serialized EventBatch. A frame torn by a crash (or damaged) fails its length or CRC
check. Loading never fails on one: a damaged frame whose declared length leads to an intact frame is
skipped and reading goes on; otherwise (a torn tail, a damaged length) the rest of that segment is
not read. Each such place is logged and counted as one dropped batch, with its events and reports
unknown (not counted) -- unless it lies before a batch already gone (below the floor), in which
case nothing was lost. A torn tail may hide several batches: they are counted as one.

Besides batch frames, a *floor* frame records that every batch numbered below it is gone
(acknowledged or dropped); floors are written with the next batch, or at once on acknowledgement
or on a drop while loading, best effort. A *counted* frame names the position of a frame whose loss
was counted (a batch dropped because it could not be read back, a damaged frame found by loading):
loading skips that batch and does not count that damage again, so each loss is counted once. They
are written at once, best effort (until one is written, a restart counts the loss again; a segment
that cannot be read at all is counted at every load).

Disk use is at most `max_bytes`, plus the dead head of the oldest segment and the segment being
written (`segment_bytes`, 1/16 of `max_bytes`, 64 KiB to 16 MiB).

Only metadata lives in memory, plus a bounded cache of recent payloads (CACHE_BATCHES / CACHE_BYTES)
so that the usual path, a batch sent as soon as it is made, does not read the disk.

Sequence numbers across restarts. The controller records each (node, seq) once and welcomes an
agent with the highest seq it recorded. A spool loaded from disk keeps its numbers: the batches a
previous process made continue the node's sequence, a batch the controller recorded but whose
acknowledgement was lost is recognised by `welcome.last_seq` and acknowledged, never renumbered
into a second recording. Numbers are only *provisional* in a spool that never met a controller
(a new directory, or one whose sequence was lost because it emptied): `synced` is False, and the
daemon renumbers them from `welcome.last_seq + 1` at the first welcome. Renumbering shifts every
number by the same amount; the shift is recorded per segment in `meta.json` (written with
temp + rename + fsync, together with `synced`), and the batches made afterwards go to a new
segment, so nothing already written is rewritten. `meta.json` is written before any batch is sent
under the new numbering; when it cannot be, nothing is renumbered and the daemon sends nothing.

Write errors (ENOSPC, EIO, a short write): the agent keeps running. The segment is truncated back
when possible and closed; the batch is kept in memory only, at most MEMORY_BATCHES / MEMORY_BYTES
of such batches (the oldest of them is then dropped and counted); the next append tries the disk
again. A renumbering alone waits for the disk (`renumber_from` returns False). Batches kept only in
memory are lost, uncounted, if the agent dies before they are acknowledged (the controller sees the
gap when later numbers arrive). Without a directory the whole spool is in memory (tests, or a state
directory that cannot be used).

Durability: data is written with write(2), so it survives the agent being killed, even by SIGKILL
(the kernel's page cache outlives the process). fsync is never called while batches are appended:
a segment closed when full is queued, and fsynced by `sync_closed` (which the daemon runs in a worker
thread from time to time) or by `close`. So only a power loss or a kernel crash can lose data: the
segments closed since the last `sync_closed` and the one being written may lose their tails
(detected as torn and counted) or, for files whose directory entry was not yet synced, vanish
(uncounted: the controller sees the gap in the numbers).
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import json
import logging
import os
import struct
import zlib
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path

import trio

from telltale.nodeagent.batcher import LOSS_BATCH_MAX_BYTES, Counters
from telltale.v1 import agent_pb2

log = logging.getLogger(__name__)

DEFAULT_CAPACITY = 4096
DEFAULT_MAX_BYTES = 256 * 2**20
CACHE_BATCHES = 64
CACHE_BYTES = 8 * 2**20
MEMORY_BATCHES = 64
MEMORY_BYTES = 16 * 2**20

MAGIC = b"TTSPOOL1"
META = "meta.json"
SUFFIX = ".seg"
_HEAD = struct.Struct("<II")  # length of the body, crc32 of the body
_BODY = struct.Struct("<BQIQQ")  # kind, seq, events, dropped records, malformed records
_POSITION = struct.Struct("<QQ")  # payload of a counted frame: segment id, offset of the frame
_BATCH = 1
_FLOOR = 2
_COUNTED = 3
# What loading reports in place of a frame that fails its checks (never written):
_SKIPPED = -1  # damaged, the frame after it intact: reading went on
_TORN = -2  # damaged, nothing intact after it: the rest of the segment was not read
_U64 = 2**64


def _write(fd: int, data: bytes) -> int:
    """os.write: the one place the spool writes segment data and meta.json (tests replace it to fail
    writes)."""
    return os.write(fd, data)


def _fsync(fd: int) -> None:
    """os.fsync: the one place the spool syncs files (tests replace it to watch or fail syncs)."""
    os.fsync(fd)


def _frame(
    kind: int, seq: int, *, events: int = 0, dropped: int = 0, malformed: int = 0, payload: bytes = b""
) -> bytes:
    body = _BODY.pack(kind, seq % _U64, events, dropped, malformed) + payload
    return _HEAD.pack(len(body), zlib.crc32(body)) + body


@dataclass(slots=True)
class _Entry:
    """One kept batch: where its frame is (segment 0: memory only) and what dropping it loses."""

    seq: int
    segment: int
    offset: int
    length: int  # length of the frame body (payload + _BODY)
    events: int
    dropped: int
    malformed: int

    @property
    def size(self) -> int:
        return self.length - _BODY.size


@dataclass(slots=True)
class _Segment:
    id: int
    path: Path
    size: int
    live: int = 0
    shift: int = 0  # added to the numbers stored in it
    fd: int = -1  # open while it is the segment being written


class Spool:
    """Batches waiting for acknowledgement, oldest first: at most `capacity` of them and `max_bytes`
    of serialized batches.

    With `directory`, batches are kept there and a previous process's batches are loaded (see the
    module docstring); the directory is created if needed. If it cannot be created or read, the
    spool logs the error and keeps batches in memory only, at most MEMORY_BATCHES / MEMORY_BYTES of
    them, as when writes fail. Not thread-safe: one trio run uses it; only `sync_closed` may run in
    another thread meanwhile.
    """

    def __init__(
        self,
        directory: Path | None = None,
        *,
        capacity: int = DEFAULT_CAPACITY,
        max_bytes: int = DEFAULT_MAX_BYTES,
        counters: Counters | None = None,
    ) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.counters = counters if counters is not None else Counters()
        self.next_seq = 1
        self.synced = False  # the numbers continue a sequence a controller knows
        self.directory = directory
        self.segment_bytes = min(max(max_bytes // 16, 64 * 1024), 16 * 2**20)
        self._entries: deque[_Entry] = deque()
        self._bytes = 0
        self._cache: OrderedDict[int, bytes] = OrderedDict()  # seq -> payload, recent durable batches
        self._cache_bytes = 0
        self._memory: dict[int, bytes] = {}  # seq -> payload of batches kept in memory only
        self._memory_bytes = 0
        # With a directory, batches kept in memory only (the disk failed) have a bound of their own.
        self._memory_bounded = directory is not None
        self._segments: dict[int, _Segment] = {}
        self._active: _Segment | None = None
        self._next_segment = 1
        self._floor_dirty = False
        self._marks: list[bytes] = []  # counted frames not yet written
        self._unsynced: deque[Path] = deque()  # closed segments not yet fsynced (shared with sync_closed)
        self._write_failing = False
        self._changed = trio.Event()
        if directory is not None:
            try:
                self._load(directory)
            except OSError as exc:
                log.error("spool directory %s unusable (%s): keeping batches in memory only", directory, exc)
                self._reset_memory_only()

    # -- state -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        """Serialized size of the kept batches."""
        return self._bytes

    @property
    def durable(self) -> bool:
        """True when batches are written to a directory."""
        return self.directory is not None

    @property
    def first_seq(self) -> int:
        """The number of the oldest kept batch, or next_seq when there is none."""
        return self._entries[0].seq if self._entries else self.next_seq

    @property
    def full(self) -> bool:
        """True unless a batch without events of up to LOSS_BATCH_MAX_BYTES would be kept now.

        When False, appending such a batch (as `Batcher.flush` makes to report losses) succeeds;
        when True, a batch with events may drop the oldest one. A smaller batch without events may
        still be kept while this is True.
        """
        return self._needs_room(LOSS_BATCH_MAX_BYTES)

    @property
    def pending_sync(self) -> int:
        """How many closed segments wait for `sync_closed`."""
        return len(self._unsynced)

    def seqs_from(self, seq: int, limit: int) -> list[int]:
        """Numbers of at most `limit` kept batches numbered `seq` or more, ascending."""
        start = self._index(seq)
        end = min(len(self._entries), start + max(limit, 0))
        return [self._entries[i].seq for i in range(start, end)]

    def count_below(self, seq: int) -> int:
        """How many kept batches are numbered below `seq`."""
        return self._index(seq)

    def _index(self, seq: int) -> int:
        return bisect.bisect_left(self._entries, seq, key=attrgetter("seq"))

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        """Return at the next append, acknowledgement, drop or renumbering."""
        await self._changed.wait()

    async def wait_beyond(self, seq: int) -> None:
        """Return once a batch numbered `seq` or more has been made."""
        while self.next_seq <= seq:
            await self._changed.wait()

    # -- changes ---------------------------------------------------------------------------
    def append(self, batch: agent_pb2.EventBatch) -> bool:
        """Number `batch` and keep it; True when kept, and then its `seq` is set to its number.

        As `append_serialized` (which this serializes `batch` for, without its `seq`): room is made
        by dropping (and counting) the oldest batches; a batch without events that would need room
        is refused (False, no number used, `seq` left at 0). Never raises on a disk error.
        """
        batch.seq = 0  # the number is the spool's, kept beside the payload
        kept = self.append_serialized(
            batch.SerializeToString(),
            events=len(batch.events),
            dropped=batch.dropped_records,
            malformed=batch.malformed_records,
        )
        if kept:
            batch.seq = self.next_seq - 1
        return kept

    def append_serialized(self, payload: bytes, *, events: int, dropped: int, malformed: int) -> bool:
        """Number and keep a serialized EventBatch; True when kept (numbered `next_seq - 1`).

        `payload` must parse as an EventBatch holding `events` events and reporting `dropped` and
        `malformed` records (the counts a drop of it loses, see Counters.count_dropped_batch_counts,
        kept beside it rather than parsed from it); its `seq` field should be unset, since `read`
        sets the batch's current number whatever it holds. The spool does not parse it: a payload
        that lies is sent as it is and its counts are trusted.

        Room is made by dropping (and counting) the oldest batches; a batch without events that
        would need room is refused (False, no number used): losses are never reported at the cost
        of events. A batch larger than `max_bytes` by itself is kept alone. Never raises on a disk
        error (see the module docstring).
        """
        if self._needs_room(len(payload)):
            if not events:
                return False
            while self._entries and self._needs_room(len(payload)):
                self._drop(self._entries[0])
        seq = self.next_seq
        self.next_seq += 1
        entry = _Entry(seq, 0, 0, _BODY.size + len(payload), events, dropped, malformed)
        frame = _frame(_BATCH, seq, events=events, dropped=dropped, malformed=malformed, payload=payload)
        oldest = self._entries[0].seq if self._entries else seq
        pending = self._pending_frames(oldest)
        where = self._write_frames(pending + frame) if self.durable else None
        self._entries.append(entry)
        self._bytes += entry.size
        if where is not None:
            segment, offset = where
            entry.segment, entry.offset = segment.id, offset + len(pending)
            segment.live += 1
            self._pending_written()
            self._cache_put(seq, payload)
        else:
            self._memory[seq] = payload
            self._memory_bytes += len(payload)
            if self._memory_bounded:
                while len(self._memory) > MEMORY_BATCHES or self._memory_bytes > MEMORY_BYTES:
                    oldest = next(iter(self._memory))
                    self._drop(self._entries[self._index(oldest)])
        self._notify()
        return True

    def _needs_room(self, size: int) -> bool:
        return len(self._entries) >= self.capacity or self._bytes + size > self.max_bytes

    def ack(self, seq: int) -> None:
        """Forget every batch numbered up to and including `seq`."""
        forgot = False
        while self._entries and self._entries[0].seq <= seq:
            self._forget(self._entries.popleft())
            forgot = True
        if forgot:
            self._floor_dirty = True
            self._persist_pending()
        self._notify()

    def renumber_from(self, first_seq: int) -> bool:
        """Shift every number so the oldest kept batch (or the next one) is `first_seq`; mark synced.

        Returns True when the new numbering is in effect and, on disk, saved: the shift is recorded in
        meta.json (fsynced) before this returns, and later batches go to a new segment. Returns False,
        after logging, when meta.json cannot be written (disk full, I/O error): nothing is renumbered
        then, so no batch may be sent under numbers a restart would not find; call again later.
        Without a directory it always succeeds.
        """
        shift = first_seq - self.first_seq
        was_synced = self.synced
        self._shift(shift)
        self.synced = True
        if self.durable:
            self._close_active()
            for segment in self._segments.values():
                segment.shift += shift
            if not self._write_meta():
                for segment in self._segments.values():
                    segment.shift -= shift
                self._shift(-shift)
                self.synced = was_synced
                return False
        self._notify()
        return True

    def _shift(self, shift: int) -> None:
        """Add `shift` to every number held in memory."""
        for entry in self._entries:
            entry.seq += shift
        self.next_seq += shift
        self._cache = OrderedDict((seq + shift, p) for seq, p in self._cache.items())
        self._memory = {seq + shift: p for seq, p in self._memory.items()}

    def close(self) -> None:
        """Persist the floor and counted frames, close the segment being written and fsync every
        closed segment not yet synced (in the calling thread). The spool stays usable."""
        if self.durable:
            self._persist_pending()
            self._close_active()
            self.sync_closed()

    def sync_closed(self) -> int:
        """fsync the segments closed since the last call (and the directory); how many were synced.

        Meant to run in a worker thread (`trio.to_thread.run_sync(spool.sync_closed)`) while the trio
        thread goes on using the spool: it touches nothing else the spool holds. It may take as long
        as writing back a whole segment. Errors are logged, never raised: a segment that cannot be
        synced stays only as safe as the page cache (a power loss may lose it).
        """
        directory = self.directory
        synced = 0
        while True:
            try:
                path = self._unsynced.popleft()  # atomic: `close` may take from it at the same time
            except IndexError:
                break
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # deleted: none of its batches is kept
            except OSError as exc:
                log.error("spool: cannot open %s to sync it (%s); a power loss may lose it", path, exc)
                continue
            try:
                _fsync(fd)
                synced += 1
            except OSError as exc:
                log.error("spool: cannot sync %s (%s); a power loss may lose it", path, exc)
            finally:
                os.close(fd)
        if synced and directory is not None:
            try:
                _fsync_dir(directory)
            except OSError as exc:
                log.error("spool: cannot sync %s (%s); a power loss may lose new segments", directory, exc)
        return synced

    # -- reading ---------------------------------------------------------------------------
    def read(self, seq: int) -> agent_pb2.EventBatch | None:
        """The kept batch numbered `seq`, or None if there is none.

        A batch that cannot be read back (I/O error, damaged frame) is dropped, counted and logged,
        and None is returned. Reads from disk in the calling thread (the page cache usually holds it).
        """
        index = self._index(seq)
        if index >= len(self._entries) or self._entries[index].seq != seq:
            return None
        entry = self._entries[index]
        payload = self._cache.get(seq)
        if payload is None:
            payload = self._memory.get(seq)
        if payload is None:
            payload = self._read_disk(entry)
        if payload is None:
            log.error("spool: batch %d cannot be read back; counted as lost", seq)
            self._drop(entry)
            if entry.segment in self._segments:  # its frame may still be read by a later load
                self._marks.append(_counted_frame(entry.segment, entry.offset))
            self._persist_pending()
            self._notify()
            return None
        batch = agent_pb2.EventBatch.FromString(payload)
        batch.seq = seq
        return batch

    def batches(self) -> Iterator[agent_pb2.EventBatch]:
        """Every kept batch, oldest first, read one at a time (for tests and tools)."""
        for seq in [e.seq for e in self._entries]:
            batch = self.read(seq)
            if batch is not None:
                yield batch

    def _read_disk(self, entry: _Entry) -> bytes | None:
        segment = self._segments.get(entry.segment)
        if segment is None:
            return None
        return _read_payload(segment.path, entry, segment.fd)

    # -- removal ---------------------------------------------------------------------------
    def _drop(self, entry: _Entry) -> None:
        """Remove a kept batch that will never be delivered, counting its losses."""
        self._entries.remove(entry)
        self.counters.count_dropped_batch_counts(entry.events, entry.dropped, entry.malformed)
        self._forget(entry)
        self._floor_dirty = True

    def _forget(self, entry: _Entry) -> None:
        """Release what a removed entry holds: its bytes, cached payload, its segment when unused."""
        self._bytes -= entry.size
        payload = self._cache.pop(entry.seq, None)
        if payload is not None:
            self._cache_bytes -= len(payload)
        payload = self._memory.pop(entry.seq, None)
        if payload is not None:
            self._memory_bytes -= len(payload)
        segment = self._segments.get(entry.segment)
        if segment is not None:
            segment.live -= 1
            self._delete_dead()

    def _cache_put(self, seq: int, payload: bytes) -> None:
        self._cache[seq] = payload
        self._cache_bytes += len(payload)
        while len(self._cache) > CACHE_BATCHES or self._cache_bytes > CACHE_BYTES:
            _, old = self._cache.popitem(last=False)
            self._cache_bytes -= len(old)

    # -- disk ------------------------------------------------------------------------------
    def _write_frames(self, frames: bytes) -> tuple[_Segment, int] | None:
        """Append `frames` to the segment being written, opening one if needed.

        Returns the segment and the offset of the frames, or None after logging a failure (the
        segment is then truncated back if possible and closed).
        """
        assert self.directory is not None
        segment = self._active
        if segment is not None and segment.size >= self.segment_bytes:
            self._close_active()
            segment = None
        created = segment is None
        try:
            if segment is None:
                segment = self._create_segment()
                frames = MAGIC + frames
            offset = segment.size
            written = _write(segment.fd, frames)
            if written != len(frames):
                raise OSError(errno.ENOSPC, "short write")
            segment.size += written
        except OSError as exc:
            if not self._write_failing:
                log.error("spool: cannot write to %s (%s); keeping batches in memory", self.directory, exc)
            self._write_failing = True
            if segment is not None:
                self._abandon(segment, created)
            return None
        if self._write_failing:
            log.warning("spool: writing to %s works again", self.directory)
            self._write_failing = False
        return segment, offset + (len(MAGIC) if created else 0)

    def _create_segment(self) -> _Segment:
        assert self.directory is not None
        path = self.directory / f"{self._next_segment:016d}{SUFFIX}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        segment = _Segment(self._next_segment, path, 0, fd=fd)
        self._next_segment += 1
        self._segments[segment.id] = segment
        self._active = segment
        return segment

    def _abandon(self, segment: _Segment, created: bool) -> None:
        """After a failed write: cut the partial frame off (or the whole new file) and close."""
        if created:
            del self._segments[segment.id]
            self._active = None
            with contextlib.suppress(OSError):
                os.close(segment.fd)
            with contextlib.suppress(OSError):
                segment.path.unlink()
            return
        with contextlib.suppress(OSError):
            os.ftruncate(segment.fd, segment.size)  # a torn tail left behind is detected on load
        self._close_active()

    def _close_active(self) -> None:
        """Close the segment being written and queue it for `sync_closed`; never syncs (hot path)."""
        segment, self._active = self._active, None
        if segment is None:
            return
        with contextlib.suppress(OSError):
            os.close(segment.fd)
        segment.fd = -1
        self._unsynced.append(segment.path)
        self._delete_dead()

    def _delete_dead(self) -> None:
        """Delete the oldest segments while none of their batches is kept.

        Only from the oldest end: a segment holds floor frames about the older ones, so it must
        outlive them.
        """
        while self._segments:
            segment = next(iter(self._segments.values()))
            if segment.live > 0 or segment is self._active:
                return
            self._delete(segment)

    def _delete(self, segment: _Segment) -> None:
        self._segments.pop(segment.id, None)
        try:
            segment.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("spool: cannot delete %s: %s", segment.path, exc)

    def _pending_frames(self, floor: int) -> bytes:
        """The floor (`floor`, if it changed) and counted frames to write before the next frame."""
        frames = b"".join(self._marks)
        return _frame(_FLOOR, floor) + frames if self._floor_dirty else frames

    def _pending_written(self) -> None:
        self._floor_dirty = False
        self._marks.clear()

    def _persist_pending(self) -> None:
        """Write the floor frame if it changed since the last one, and the counted frames; best effort
        (what cannot be written now goes with the next batch)."""
        if (
            (self._floor_dirty or self._marks)
            and self._segments
            and self._write_frames(self._pending_frames(self.first_seq)) is not None
        ):
            self._pending_written()

    def _write_meta(self) -> bool:
        """Write and fsync meta.json (temp file + rename); False, after logging, when it failed."""
        assert self.directory is not None
        meta = {
            "version": 1,
            "synced": self.synced,
            "shifts": {str(s.id): s.shift for s in self._segments.values() if s.shift},
        }
        data = json.dumps(meta).encode()
        path = self.directory / META
        tmp = path.with_suffix(".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                if _write(fd, data) != len(data):
                    raise OSError(errno.ENOSPC, "short write")
                _fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            _fsync_dir(self.directory)
        except OSError as exc:
            log.error("spool: cannot write %s (%s); the batches keep their numbers", path, exc)
            return False
        return True

    def _reset_memory_only(self) -> None:
        self.directory = None
        self._segments.clear()
        self._active = None

    # -- loading ---------------------------------------------------------------------------
    def _load(self, directory: Path) -> None:
        """Load what a previous process left in `directory`. Raises OSError if it is unusable."""
        directory.mkdir(parents=True, exist_ok=True)
        scan = _scan(directory)
        for damage in scan.damaged:
            if damage.offset < 0:
                log.error("spool: cannot read %s; skipped, one batch counted as lost", damage.path)
            elif damage.kind == _TORN:
                log.warning(
                    "spool: %s is damaged or torn at byte %d; the rest of it is unreadable, one batch "
                    "counted as lost",
                    damage.path,
                    damage.offset,
                )
            else:
                log.warning(
                    "spool: %s holds a damaged frame at byte %d; skipped, one batch counted as lost",
                    damage.path,
                    damage.offset,
                )
            self.counters.count_dropped_batch_counts(0, 0, 0)
        self._segments = {segment.id: segment for segment in scan.segments}
        self._next_segment = scan.next_segment
        for entry in scan.entries:
            self._entries.append(entry)
            self._bytes += entry.size
            self._segments[entry.segment].live += 1
        self.next_seq = scan.next_seq
        self.synced = scan.synced
        if not self.synced:
            # A meta.json saying "synced" is stale when nothing of that sequence is left: the
            # batches numbered from now on are provisional, and a restart must know it.
            (directory / META).unlink(missing_ok=True)
        self._delete_dead()
        if self._entries:
            log.warning(
                "spool: %d batches (%d bytes) left by a previous run, numbers %d..%d (%s)",
                len(self._entries),
                self._bytes,
                self._entries[0].seq,
                self._entries[-1].seq,
                "synced" if self.synced else "provisional",
            )
        while self._entries and (self._bytes > self.max_bytes or len(self._entries) > self.capacity):
            self._drop(self._entries[0])
        # Remember what was counted, so that the next load does not count it again.
        self._marks = [
            _counted_frame(d.segment, d.offset) for d in scan.damaged if d.segment in self._segments
        ]
        self._persist_pending()


def read_spool(directory: Path) -> list[agent_pb2.EventBatch]:
    """Every batch kept in the spool `directory`, oldest first, numbered as an agent loading it would
    number them. Read-only: safe while an agent uses the directory (a batch written meanwhile may be
    missed). Holds them all in memory: for inspection and tests. Damaged frames are skipped as when
    loading; raises OSError if the directory cannot be listed.
    """
    batches = []
    for entry in _scan(directory).entries:
        payload = _read_payload(directory / f"{entry.segment:016d}{SUFFIX}", entry)
        if payload is not None:
            batch = agent_pb2.EventBatch.FromString(payload)
            batch.seq = entry.seq
            batches.append(batch)
    return batches


@dataclass
class _Damage:
    """A place where loading found a damaged frame: one batch counted as lost."""

    kind: int  # _SKIPPED or _TORN (the rest of the segment unread)
    segment: int
    path: Path
    offset: int  # -1: the whole file is unreadable
    before: int | None = None  # the number of the next intact batch written after it, if any


@dataclass
class _Scan:
    """What a spool directory holds, as found by reading it (nothing is changed)."""

    segments: list[_Segment]  # readable segments, oldest first
    entries: list[_Entry]  # kept batches (at or above the floor, not counted as lost), ascending
    damaged: list[_Damage]  # losses not counted yet
    next_seq: int
    synced: bool
    next_segment: int


def _scan(directory: Path) -> _Scan:
    """Read a spool directory without changing it. Raises OSError if it cannot be listed."""
    synced, shifts = _read_meta(directory / META)
    ids = sorted(
        int(p.name.removesuffix(SUFFIX))
        for p in directory.iterdir()
        if p.name.endswith(SUFFIX) and p.name.removesuffix(SUFFIX).isdigit()
    )
    scan = _Scan([], [], [], 1, False, max([*ids, *shifts, 0]) + 1)
    batches: list[_Entry] = []
    damaged: list[_Damage] = []
    waiting: list[_Damage] = []  # damaged frames not yet followed by an intact batch
    counted: set[tuple[int, int]] = set()
    floor = highest = 0
    seen = False
    for sid in ids:
        segment = _Segment(sid, directory / f"{sid:016d}{SUFFIX}", 0, shift=shifts.get(sid, 0))
        try:
            data = segment.path.read_bytes()
        except FileNotFoundError:
            continue  # deleted by the agent using the directory
        except OSError:
            damaged.append(_Damage(_TORN, sid, segment.path, -1))
            continue
        segment.size = len(data)
        scan.segments.append(segment)
        found, marks = _parse(data, segment)
        counted.update(marks)
        for kind, entry in found:
            if kind in (_SKIPPED, _TORN):
                damaged.append(_Damage(kind, sid, segment.path, entry.offset))
                waiting.append(damaged[-1])
                continue
            seen = True
            if kind == _FLOOR:
                floor = max(floor, entry.seq)
            else:
                highest = max(highest, entry.seq)
                batches.append(entry)
                for damage in waiting:
                    damage.before = entry.seq
                waiting.clear()
    # Within and across segments batches were written in ascending order: a damaged frame written
    # before a batch that is gone (below the floor) was gone too, or was not a batch.
    scan.damaged = [
        d for d in damaged if (d.segment, d.offset) not in counted and (d.before is None or d.before >= floor)
    ]
    batches.sort(key=attrgetter("seq"))
    last = floor - 1
    for entry in batches:
        if entry.seq > last and (entry.segment, entry.offset) not in counted:
            scan.entries.append(entry)
            last = entry.seq
    scan.next_seq = max(highest + 1, floor, 1) if seen else 1
    scan.synced = synced and seen
    return scan


def _read_payload(path: Path, entry: _Entry, fd: int = -1) -> bytes | None:
    """The payload of `entry` read from `path` (or from `fd`, already open on it), checked against
    its CRC; None, after logging, when it cannot be read or is damaged."""
    try:
        own = fd < 0
        if own:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.pread(fd, _HEAD.size + entry.length, entry.offset)
        finally:
            if own:
                os.close(fd)
    except OSError as exc:
        log.error("spool: cannot read batch %d from %s: %s", entry.seq, path, exc)
        return None
    if len(data) == _HEAD.size + entry.length:
        length, crc = _HEAD.unpack_from(data)
        body = data[_HEAD.size :]
        if length == entry.length and zlib.crc32(body) == crc:
            return body[_BODY.size :]
    log.error("spool: batch %d in %s is damaged", entry.seq, path)
    return None


def _parse(data: bytes, segment: _Segment) -> tuple[list[tuple[int, _Entry]], list[tuple[int, int]]]:
    """The frames of one segment in file order, as (kind, entry); and the positions (segment id,
    offset) named by its counted frames.

    A damaged frame comes as (_SKIPPED, an entry at its offset) when its declared length leads to an
    intact frame, and reading goes on there; otherwise as (_TORN, ...), and the rest is not read. A
    damaged length field that happens to lead to an intact frame hides the frames in between: they
    are reported as one.
    """
    found: list[tuple[int, _Entry]] = []
    marks: list[tuple[int, int]] = []
    if not data.startswith(MAGIC):
        if data:
            found.append((_TORN, _Entry(0, segment.id, 0, 0, 0, 0, 0)))
        return found, marks
    pos = len(MAGIC)
    while pos < len(data):
        size = _intact(data, pos)
        if size is None:
            after = pos + _HEAD.size + _HEAD.unpack_from(data, pos)[0] if len(data) - pos >= _HEAD.size else 0
            skip = pos < after < len(data) and _intact(data, after) is not None
            found.append((_SKIPPED if skip else _TORN, _Entry(0, segment.id, pos, 0, 0, 0, 0)))
            if not skip:
                break
            pos = after
            continue
        length = size - _HEAD.size
        kind, seq, events, dropped, malformed = _BODY.unpack_from(data, pos + _HEAD.size)
        if kind in (_BATCH, _FLOOR):
            entry = _Entry(seq + segment.shift, segment.id, pos, length, events, dropped, malformed)
            found.append((kind, entry))
        elif kind == _COUNTED and length >= _BODY.size + _POSITION.size:
            sid, offset = _POSITION.unpack_from(data, pos + _HEAD.size + _BODY.size)
            marks.append((sid, offset))
        pos += size
    return found, marks


def _intact(data: bytes, pos: int) -> int | None:
    """The size of the frame at `pos` (head included) when it is whole and passes its CRC, else None."""
    if len(data) - pos < _HEAD.size:
        return None
    length, crc = _HEAD.unpack_from(data, pos)
    start = pos + _HEAD.size
    if length < _BODY.size or len(data) - start < length:
        return None
    if zlib.crc32(memoryview(data)[start : start + length]) != crc:
        return None
    return _HEAD.size + int(length)


def _counted_frame(segment: int, offset: int) -> bytes:
    """A frame recording that the loss of the frame at (`segment`, `offset`) has been counted."""
    return _frame(_COUNTED, 0, payload=_POSITION.pack(segment, offset))


def _read_meta(path: Path) -> tuple[bool, dict[int, int]]:
    """(synced, shift per segment id) from meta.json; (False, {}) when it is absent or unreadable."""
    try:
        meta = json.loads(path.read_text())
        return bool(meta["synced"]), {int(k): int(v) for k, v in meta["shifts"].items()}
    except FileNotFoundError:
        return False, {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.error("spool: %s unreadable (%s): its batches are numbered provisionally", path, exc)
        return False, {}


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _fsync(fd)
    finally:
        os.close(fd)
