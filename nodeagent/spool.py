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
check: loading stops reading that segment there, counts one dropped batch and logs it; it never
fails. Besides batch frames, a *floor* frame records that every batch numbered below it is gone
(acknowledged or dropped); floors are written with the next batch, or at once on acknowledgement,
best effort. Disk use is at most `max_bytes`, plus the dead head of the oldest segment and the
segment being written (`segment_bytes`, 1/16 of `max_bytes`, 64 KiB to 16 MiB).

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
under the new numbering.

Write errors (ENOSPC, EIO, a short write): the agent keeps running. The segment is truncated back
when possible and closed; the batch is kept in memory only, at most MEMORY_BATCHES / MEMORY_BYTES
of such batches (the oldest of them is then dropped and counted); the next append tries the disk
again. Batches kept only in memory are lost, uncounted, if the agent dies before they are
acknowledged (the controller sees the gap when later numbers arrive). Without a directory the
whole spool is in memory (tests, or a state directory that cannot be used).

Durability: data is written with write(2), so it survives the agent being killed; segments are
fsynced when closed, so after a machine crash the tail of the open segment may be lost (detected
as torn, counted).
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

from telltale.nodeagent.batcher import Counters
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
_BATCH = 1
_FLOOR = 2
_U64 = 2**64


def _write(fd: int, data: bytes) -> int:
    """os.write: the one place the spool writes segment data (tests replace it to fail writes)."""
    return os.write(fd, data)


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
    them, as when writes fail. Not thread-safe: one trio run uses it.
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
        """True when appending a batch would drop the oldest one."""
        return len(self._entries) >= self.capacity or self._bytes >= self.max_bytes

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
        floor = _frame(_FLOOR, oldest) if self._floor_dirty else b""
        where = self._write_frames(floor + frame if floor else frame) if self.durable else None
        self._entries.append(entry)
        self._bytes += entry.size
        if where is not None:
            segment, offset = where
            entry.segment, entry.offset = segment.id, offset + len(floor)
            segment.live += 1
            self._floor_dirty = False
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
            self._persist_floor()
        self._notify()

    def renumber_from(self, first_seq: int) -> None:
        """Shift every number so the oldest kept batch (or the next one) is `first_seq`; mark synced.

        On disk the shift is recorded in meta.json before this returns, and later batches go to a
        new segment. If meta.json cannot be written the error is logged: this process numbers
        correctly, but a restart would take the numbers for provisional again.
        """
        shift = first_seq - self.first_seq
        for entry in self._entries:
            entry.seq += shift
        self.next_seq += shift
        self._cache = OrderedDict((seq + shift, p) for seq, p in self._cache.items())
        self._memory = {seq + shift: p for seq, p in self._memory.items()}
        self.synced = True
        if self.durable:
            self._close_active()
            for segment in self._segments.values():
                segment.shift += shift
            self._write_meta()
        self._notify()

    def close(self) -> None:
        """Persist the floor, fsync and close the segment being written. The spool stays usable."""
        if self.durable:
            self._persist_floor()
            self._close_active()

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
        self._close_active(sync=False)

    def _close_active(self, *, sync: bool = True) -> None:
        segment, self._active = self._active, None
        if segment is None:
            return
        if sync:
            with contextlib.suppress(OSError):
                os.fsync(segment.fd)
        with contextlib.suppress(OSError):
            os.close(segment.fd)
        segment.fd = -1
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

    def _persist_floor(self) -> None:
        """Write the floor frame if it changed since the last one; best effort."""
        if (
            self._floor_dirty
            and self._segments
            and self._write_frames(_frame(_FLOOR, self.first_seq)) is not None
        ):
            self._floor_dirty = False

    def _write_meta(self) -> None:
        assert self.directory is not None
        meta = {
            "version": 1,
            "synced": self.synced,
            "shifts": {str(s.id): s.shift for s in self._segments.values() if s.shift},
        }
        path = self.directory / META
        tmp = path.with_suffix(".tmp")
        try:
            with tmp.open("w") as f:
                json.dump(meta, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync_dir(self.directory)
        except OSError as exc:
            log.error("spool: cannot write %s (%s); a restart may renumber these batches", path, exc)

    def _reset_memory_only(self) -> None:
        self.directory = None
        self._segments.clear()
        self._active = None

    # -- loading ---------------------------------------------------------------------------
    def _load(self, directory: Path) -> None:
        """Load what a previous process left in `directory`. Raises OSError if it is unusable."""
        directory.mkdir(parents=True, exist_ok=True)
        scan = _scan(directory)
        for path, where in scan.damaged:
            if where < 0:
                log.error("spool: cannot read %s; skipped, one batch counted as lost", path)
            else:
                log.warning("spool: %s is damaged or torn at byte %d; one batch counted as lost", path, where)
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
class _Scan:
    """What a spool directory holds, as found by reading it (nothing is changed)."""

    segments: list[_Segment]  # readable segments, oldest first
    entries: list[_Entry]  # kept batches (at or above the floor), ascending
    damaged: list[tuple[Path, int]]  # segments whose reading stopped early, and where (-1: unreadable)
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
    floor = highest = 0
    seen = False
    for sid in ids:
        segment = _Segment(sid, directory / f"{sid:016d}{SUFFIX}", 0, shift=shifts.get(sid, 0))
        try:
            data = segment.path.read_bytes()
        except FileNotFoundError:
            continue  # deleted by the agent using the directory
        except OSError:
            scan.damaged.append((segment.path, -1))
            continue
        segment.size = len(data)
        scan.segments.append(segment)
        found, torn = _parse(data, segment)
        if torn:
            scan.damaged.append((segment.path, torn))
        for kind, entry in found:
            seen = True
            if kind == _FLOOR:
                floor = max(floor, entry.seq)
            else:
                highest = max(highest, entry.seq)
                batches.append(entry)
    batches.sort(key=attrgetter("seq"))
    last = floor - 1
    for entry in batches:
        if entry.seq > last:
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


def _parse(data: bytes, segment: _Segment) -> tuple[list[tuple[int, _Entry]], int]:
    """Frames of one segment as (kind, entry); and the offset where a damaged frame stopped the
    reading (0 when the whole segment was read)."""
    found: list[tuple[int, _Entry]] = []
    if not data.startswith(MAGIC):
        return found, (1 if data else 0)
    pos = len(MAGIC)
    while pos < len(data):
        if len(data) - pos < _HEAD.size:
            return found, pos
        length, crc = _HEAD.unpack_from(data, pos)
        body = data[pos + _HEAD.size : pos + _HEAD.size + length]
        if length < _BODY.size or len(body) < length or zlib.crc32(body) != crc:
            return found, pos
        kind, seq, events, dropped, malformed = _BODY.unpack_from(body)
        entry = _Entry(seq + segment.shift, segment.id, pos, length, events, dropped, malformed)
        if kind in (_BATCH, _FLOOR):
            found.append((kind, entry))
        pos += _HEAD.size + length
    return found, 0


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
        os.fsync(fd)
    finally:
        os.close(fd)
