"""Shim records → telltale.v1 Events.

Two ways produce the same Event: `to_event` from a decoded Record, and, for the native fast path
(telltale._native._records), `Event.FromString(event_prefix(...) + body)`, where the body is the
serialized record-specific part and the prefix carries what the agent knows beyond the record
(workload id, process details): protobuf merges the two as they are parsed.
"""

from __future__ import annotations

from telltale.nodeagent.records import GapReason, LibraryFlag, Record, RecordFlag, RecordKind
from telltale.v1 import common_pb2

# Plain ints: testing an IntFlag member costs an enum construction per record.
_REPEAT = int(RecordFlag.REPEAT)
_TRUNCATED = int(RecordFlag.TRUNCATED)
_FORKED = int(RecordFlag.FORKED)

_KINDS = {
    RecordKind.PROC_START: common_pb2.EVENT_KIND_PROCESS_START,
    RecordKind.EXEC: common_pb2.EVENT_KIND_EXEC,
    RecordKind.CONNECT: common_pb2.EVENT_KIND_CONNECT,
    RecordKind.BIND: common_pb2.EVENT_KIND_BIND,
    RecordKind.LISTEN: common_pb2.EVENT_KIND_LISTEN,
    RecordKind.SOCKET: common_pb2.EVENT_KIND_SOCKET,
    RecordKind.ACCEPT: common_pb2.EVENT_KIND_ACCEPT,
    RecordKind.SEND: common_pb2.EVENT_KIND_SEND,
    RecordKind.RESOLVE: common_pb2.EVENT_KIND_RESOLVE,
    RecordKind.FILE_OPEN: common_pb2.EVENT_KIND_FILE_OPEN,
    RecordKind.FILE_CHANGE: common_pb2.EVENT_KIND_FILE_CHANGE,
    RecordKind.CREDENTIALS: common_pb2.EVENT_KIND_CREDENTIALS,
    RecordKind.PTRACE: common_pb2.EVENT_KIND_PTRACE,
    RecordKind.PRCTL: common_pb2.EVENT_KIND_PRCTL,
    RecordKind.MEMFD: common_pb2.EVENT_KIND_MEMFD,
    RecordKind.UNSAFE_CALL: common_pb2.EVENT_KIND_UNSAFE_CALL,
    RecordKind.CRYPTO: common_pb2.EVENT_KIND_CRYPTO,
    RecordKind.LIBRARY_LOAD: common_pb2.EVENT_KIND_LIBRARY_LOAD,
    RecordKind.MEMORY_PROTECT: common_pb2.EVENT_KIND_MEMORY_PROTECT,
    RecordKind.COVERAGE_GAP: common_pb2.EVENT_KIND_COVERAGE_GAP,
}
_SOCKET_KINDS = frozenset(
    {
        RecordKind.CONNECT,
        RecordKind.BIND,
        RecordKind.LISTEN,
        RecordKind.SOCKET,
        RecordKind.ACCEPT,
        RecordKind.SEND,
    }
)

# Open flags (Linux values, the same on every architecture the shim builds for).
_O_ACCMODE = 0o3
_O_WRITE_FLAGS = 0o100 | 0o1000 | 0o2000  # O_CREAT, O_TRUNC, O_APPEND

_FILE_KINDS = frozenset({RecordKind.FILE_OPEN, RecordKind.FILE_CHANGE})
_CODE_KINDS = frozenset({RecordKind.LIBRARY_LOAD, RecordKind.MEMORY_PROTECT})
_AT_START = int(LibraryFlag.AT_START)
_WRITABLE_DIR = int(LibraryFlag.WRITABLE_DIR)
_PRIVILEGE_KINDS = frozenset({RecordKind.CREDENTIALS, RecordKind.PTRACE, RecordKind.PRCTL, RecordKind.MEMFD})


def to_event(record: Record, workload_id: str, process: common_pb2.ProcessInfo | None) -> common_pb2.Event:
    """Build the Event for a record of workload `workload_id`.

    `process` is what the agent knows of the acting process from its start record (exe, argv,
    credentials); the record's own pid/ppid/tid always win.
    """
    flags = int(record.flags)
    event = common_pb2.Event(
        kind=_KINDS.get(record.kind, common_pb2.EVENT_KIND_UNSPECIFIED),
        workload_id=workload_id,
        count=max(record.count, 1),
        repeat=bool(flags & _REPEAT),
        truncated=bool(flags & _TRUNCATED),
    )
    event.time.FromNanoseconds(record.time_ns)
    proc = event.process
    if process is not None:
        proc.CopyFrom(process)
    proc.pid, proc.ppid, proc.tid = record.pid, record.ppid, record.tid
    if record.kind == RecordKind.PROC_START:
        fill_process(proc, record)
    if record.caller is not None:
        event.caller_module = record.caller
    if record.result is not None:
        event.result.known = True
        event.result.return_value, event.result.error_number = record.result
    if record.kind in _SOCKET_KINDS:
        sock = event.socket
        if record.sockaddr is not None:
            sock.address.family = record.sockaddr.family
            sock.address.address = record.sockaddr.address
            sock.address.port = record.sockaddr.port or 0
        if record.sockinfo is not None:
            sock.domain, sock.type, sock.protocol = record.sockinfo
        if record.backlog is not None:
            sock.backlog = record.backlog
    elif record.kind == RecordKind.EXEC:
        ex = event.exec
        ex.path = record.path or ""
        ex.argv.extend(record.argv or ())
        if record.variant is not None:
            ex.variant = common_pb2.ExecVariant.ValueType(int(record.variant))
        if record.child_pid is not None:
            ex.child_pid = record.child_pid
    elif record.kind == RecordKind.RESOLVE:
        res = event.resolve
        res.name = record.name or ""
        res.addresses.extend(record.addresses or ())
        res.function = record.function or "getaddrinfo"
    elif record.kind in _PRIVILEGE_KINDS:
        _fill_privilege(event, record)
    elif record.kind in _FILE_KINDS:
        _fill_file(event, record)
    elif record.kind in _CODE_KINDS:
        _fill_code(event, record)
    elif record.kind == RecordKind.COVERAGE_GAP:
        _fill_coverage_gap(event, record)
    elif record.kind in _CALL_KINDS:
        _fill_call(event, record)
    return event


_CALL_KINDS = frozenset({RecordKind.UNSAFE_CALL, RecordKind.CRYPTO})


def _fill_call(event: common_pb2.Event, record: Record) -> None:
    """The detail of an UNSAFE_CALL or CRYPTO record (set even when empty)."""
    if record.kind == RecordKind.UNSAFE_CALL:
        event.call.SetInParent()
        event.call.function = record.function or ""
        return
    crypto = event.crypto
    crypto.SetInParent()
    crypto.algorithm = record.algorithm or ""
    crypto.protocol_version = record.protocol or ""
    crypto.library = record.library or ""
    crypto.purpose = record.purpose or ""


# GAP_REASONS bits, in bit order, and the reasons they stand for.
_GAP_REASONS = (
    (GapReason.STATIC, common_pb2.COVERAGE_GAP_REASON_STATIC),
    (GapReason.GO, common_pb2.COVERAGE_GAP_REASON_GO),
    (GapReason.SETUID, common_pb2.COVERAGE_GAP_REASON_SETUID),
    (GapReason.SETGID, common_pb2.COVERAGE_GAP_REASON_SETGID),
    (GapReason.FILE_CAPABILITIES, common_pb2.COVERAGE_GAP_REASON_FILE_CAPABILITIES),
    (GapReason.ENVIRONMENT_STRIPPED, common_pb2.COVERAGE_GAP_REASON_ENVIRONMENT_STRIPPED),
)


def _fill_coverage_gap(event: common_pb2.Event, record: Record) -> None:
    """The detail of a COVERAGE_GAP record (set even when empty); unknown reason bits are left out."""
    gap = event.coverage_gap
    gap.SetInParent()
    gap.path = record.path or ""
    bits = int(record.gap_reasons or 0)
    gap.reasons.extend(reason for bit, reason in _GAP_REASONS if bits & bit)
    if record.variant is not None:
        gap.variant = common_pb2.ExecVariant.ValueType(int(record.variant))


def _fill_code(event: common_pb2.Event, record: Record) -> None:
    """The detail of a LIBRARY_LOAD or MEMORY_PROTECT record (set even when all zero)."""
    if record.kind == RecordKind.LIBRARY_LOAD:
        lib = event.library
        lib.SetInParent()
        lib.path = record.path or ""
        bits = int(record.lib_flags or 0)
        lib.at_start = bool(bits & _AT_START)
        lib.writable_dir = bool(bits & _WRITABLE_DIR)
        lib.requested = record.requested or ""
    else:
        mem = event.memory
        mem.SetInParent()
        mem.function = record.function or ""
        mem.protection = record.protection or 0
        mem.flags = record.map_flags or 0
        mem.length = record.length or 0


def _fill_file(event: common_pb2.Event, record: Record) -> None:
    """The detail of a FILE_OPEN or FILE_CHANGE record (set even when all zero)."""
    if record.kind == RecordKind.FILE_OPEN:
        f = event.file
        f.SetInParent()
        f.path = record.path or ""
        f.flags = record.file_flags or 0
        f.mode = record.file_mode or 0
        f.write = bool(f.flags & _O_ACCMODE or f.flags & _O_WRITE_FLAGS)
        f.function = record.function or ""
    else:
        ch = event.file_change
        ch.SetInParent()
        if record.change is not None:
            ch.change = common_pb2.FileChangeKind.ValueType(int(record.change))
        ch.path = record.path or ""
        ch.new_path = record.new_path or ""
        ch.mode = record.file_mode or 0


def _fill_privilege(event: common_pb2.Event, record: Record) -> None:
    """The detail of a CREDENTIALS, PTRACE, PRCTL or MEMFD record (set even when all zero)."""
    if record.kind == RecordKind.CREDENTIALS:
        cred = event.credentials
        cred.SetInParent()
        cred.function = record.function or ""
        ids = record.ids or ()
        if cred.function.endswith("uid"):
            cred.uids.extend(ids)
        elif cred.function.endswith("gid"):
            cred.gids.extend(ids)
        cred.groups.extend(record.groups or ())
        if record.capabilities is not None:
            cred.capabilities_effective, cred.capabilities_permitted, _inheritable = record.capabilities
    elif record.kind == RecordKind.PTRACE:
        event.ptrace.SetInParent()
        event.ptrace.request = record.request or 0
        event.ptrace.target_pid = record.target_pid or 0
    elif record.kind == RecordKind.PRCTL:
        event.prctl.SetInParent()
        event.prctl.option = record.option or 0
        event.prctl.argument = record.argument or 0
    elif record.kind == RecordKind.MEMFD:
        event.memfd.SetInParent()
        event.memfd.name = record.memfd_name or ""
        event.memfd.flags = record.memfd_flags or 0


def fill_process(proc: common_pb2.ProcessInfo, record: Record) -> None:
    """Copy what a process-start record says about its process into `proc`."""
    proc.exe = record.exe or ""
    del proc.argv[:]
    proc.argv.extend(record.argv or ())
    proc.cwd = record.cwd or ""
    if record.creds is not None:
        ruid, euid, _suid, rgid, egid, _sgid = record.creds
        proc.uid, proc.euid, proc.gid, proc.egid = ruid, euid, rgid, egid
    proc.forked = bool(int(record.flags) & _FORKED)
    if record.capabilities is not None:
        proc.capabilities_effective, proc.capabilities_permitted, _inheritable = record.capabilities
    del proc.ld_preload[:]
    proc.ld_preload.extend(record.ld_preload or ())
    del proc.ld_library_path[:]
    proc.ld_library_path.extend(record.ld_library_path or ())


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_WORKLOAD_ID_KEY = b"\x1a"  # Event.workload_id: field 3, length-delimited
_PROCESS_KEY = b"\x22"  # Event.process: field 4, length-delimited


def event_prefix(workload_id: str, process: common_pb2.ProcessInfo | None) -> bytes:
    """The serialized Event fields that `to_event(record, workload_id, process)` takes from its
    arguments rather than from the record: prepended to a native record body, the parse of both
    equals `to_event`'s Event.

    `process` is copied without its pid, ppid and tid, so the record's always win (a zero in the
    record, which protobuf does not serialize, must not let the process's value through).
    """
    prefix = b""
    if workload_id:
        text = workload_id.encode()
        prefix = _WORKLOAD_ID_KEY + _varint(len(text)) + text
    if process is not None:
        bare = common_pb2.ProcessInfo()
        bare.CopyFrom(process)
        bare.ClearField("pid")
        bare.ClearField("ppid")
        bare.ClearField("tid")
        body = bare.SerializeToString()
        prefix += _PROCESS_KEY + _varint(len(body)) + body
    return prefix
