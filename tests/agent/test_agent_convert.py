"""Shim records become the right telltale.v1 Events."""

from __future__ import annotations

import dataclasses
import os
import socket
import struct
from typing import Any

import pytest

from telltale.nodeagent.convert import event_prefix, to_event
from telltale.nodeagent.records import (
    ExecVariant,
    FileChange,
    Record,
    RecordFlag,
    RecordKind,
    decode_sockaddr,
)
from telltale.v1 import common_pb2

T0 = 1_750_000_000_123_456_789
NO_FLAGS = RecordFlag(0)


def rec(kind: RecordKind, flags: RecordFlag = NO_FLAGS, count: int = 1, **fields: Any) -> Record:
    return Record(
        kind, flags, pid=300, ppid=200, tid=301, count=count, time_ns=T0, dropped=0, seq=1, **fields
    )


def sockaddr_in(ip: str, port: int) -> bytes:
    """struct sockaddr_in as the program passed it: family in host order, port in network order."""
    return struct.pack("<H", socket.AF_INET) + struct.pack(">H", port) + socket.inet_aton(ip) + bytes(8)


def sockaddr_in6(ip: str, port: int, scope: int = 0) -> bytes:
    return (
        struct.pack("<H", socket.AF_INET6)
        + struct.pack(">HI", port, 0)
        + socket.inet_pton(socket.AF_INET6, ip)
        + struct.pack("<I", scope)
    )


def sockaddr_un(path: bytes) -> bytes:
    return struct.pack("<H", socket.AF_UNIX) + path + b"\0"


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (RecordKind.PROC_START, common_pb2.EVENT_KIND_PROCESS_START),
        (RecordKind.EXEC, common_pb2.EVENT_KIND_EXEC),
        (RecordKind.CONNECT, common_pb2.EVENT_KIND_CONNECT),
        (RecordKind.BIND, common_pb2.EVENT_KIND_BIND),
        (RecordKind.LISTEN, common_pb2.EVENT_KIND_LISTEN),
        (RecordKind.SOCKET, common_pb2.EVENT_KIND_SOCKET),
        (RecordKind.ACCEPT, common_pb2.EVENT_KIND_ACCEPT),
        (RecordKind.SEND, common_pb2.EVENT_KIND_SEND),
        (RecordKind.RESOLVE, common_pb2.EVENT_KIND_RESOLVE),
        (RecordKind.CREDENTIALS, common_pb2.EVENT_KIND_CREDENTIALS),
        (RecordKind.PTRACE, common_pb2.EVENT_KIND_PTRACE),
        (RecordKind.PRCTL, common_pb2.EVENT_KIND_PRCTL),
        (RecordKind.MEMFD, common_pb2.EVENT_KIND_MEMFD),
        (RecordKind.FILE_OPEN, common_pb2.EVENT_KIND_FILE_OPEN),
        (RecordKind.FILE_CHANGE, common_pb2.EVENT_KIND_FILE_CHANGE),
    ],
)
def test_each_record_kind_maps_to_its_event_kind(kind: RecordKind, expected: int) -> None:
    event = to_event(rec(kind), "w-1", None)
    assert event.kind == expected
    assert event.workload_id == "w-1"
    assert event.time.ToNanoseconds() == T0
    assert (event.process.pid, event.process.ppid, event.process.tid) == (300, 200, 301)


def test_process_start_describes_its_process() -> None:
    event = to_event(
        rec(
            RecordKind.PROC_START,
            RecordFlag.FORKED,
            exe="/usr/bin/python3",
            argv=("python3", "-m", "app"),
            cwd="/srv",
            creds=(1000, 0, 0, 1001, 1002, 1003),
        ),
        "w-1",
        None,
    )
    proc = event.process
    assert (proc.exe, list(proc.argv), proc.cwd) == ("/usr/bin/python3", ["python3", "-m", "app"], "/srv")
    assert (proc.uid, proc.euid, proc.gid, proc.egid) == (1000, 0, 1001, 1002)
    assert proc.forked
    assert event.WhichOneof("detail") is None


def test_connect_carries_inet_address_port_socket_type_and_result() -> None:
    event = to_event(
        rec(
            RecordKind.CONNECT,
            sockaddr=decode_sockaddr(sockaddr_in("10.1.2.3", 443)),
            sockinfo=(socket.AF_INET, socket.SOCK_STREAM | 0o4000, 6),
            result=(-1, 115),
        ),
        "w-1",
        None,
    )
    assert event.WhichOneof("detail") == "socket"
    addr = event.socket.address
    assert (addr.family, addr.address, addr.port) == ("inet", "10.1.2.3", 443)
    assert (event.socket.domain, event.socket.type, event.socket.protocol) == (2, 1 | 0o4000, 6)
    assert (event.result.known, event.result.return_value, event.result.error_number) == (True, -1, 115)


def test_raw_socket_carries_its_kind_and_result() -> None:
    event = to_event(
        rec(RecordKind.SOCKET, sockinfo=(socket.AF_INET, socket.SOCK_RAW, 1), result=(3, 0)), "w-1", None
    )
    assert event.kind == common_pb2.EVENT_KIND_SOCKET
    assert event.WhichOneof("detail") == "socket"
    assert (event.socket.domain, event.socket.type, event.socket.protocol) == (2, 3, 1)
    assert not event.socket.HasField("address")
    assert (event.result.known, event.result.return_value) == (True, 3)


def test_accept_carries_the_peer_and_no_result() -> None:
    event = to_event(
        rec(
            RecordKind.ACCEPT,
            count=3,
            flags=RecordFlag.REPEAT,
            sockaddr=decode_sockaddr(sockaddr_in("127.0.0.1", 40000)),
            sockinfo=(socket.AF_INET, socket.SOCK_STREAM, 6),
        ),
        "w-1",
        None,
    )
    assert event.kind == common_pb2.EVENT_KIND_ACCEPT
    addr = event.socket.address
    assert (addr.family, addr.address, addr.port) == ("inet", "127.0.0.1", 40000)
    assert (event.socket.domain, event.socket.type, event.socket.protocol) == (2, 1, 6)
    assert (event.count, event.repeat, event.result.known) == (3, True, False)


def test_send_carries_the_destination() -> None:
    event = to_event(
        rec(
            RecordKind.SEND,
            sockaddr=decode_sockaddr(sockaddr_in6("2001:db8::53", 53)),
            sockinfo=(socket.AF_INET6, socket.SOCK_DGRAM, 17),
            result=(12, 0),
        ),
        "w-1",
        None,
    )
    assert event.kind == common_pb2.EVENT_KIND_SEND
    addr = event.socket.address
    assert (addr.family, addr.address, addr.port) == ("inet6", "2001:db8::53", 53)
    assert (event.socket.type, event.result.return_value) == (socket.SOCK_DGRAM, 12)


def test_resolve_carries_name_addresses_and_function() -> None:
    event = to_event(
        rec(RecordKind.RESOLVE, name="db.internal", addresses=("10.0.0.7", "fd00::7"), result=(0, 0)),
        "w-1",
        None,
    )
    assert event.kind == common_pb2.EVENT_KIND_RESOLVE
    assert event.WhichOneof("detail") == "resolve"
    assert (event.resolve.name, list(event.resolve.addresses), event.resolve.function) == (
        "db.internal",
        ["10.0.0.7", "fd00::7"],
        "getaddrinfo",
    )


def test_resolve_names_the_older_resolver_call() -> None:
    """A RESOLVE record with FUNCTION (a gethostbyname* call) keeps that name in the event."""
    record = rec(RecordKind.RESOLVE, name="db.internal", function="gethostbyname_r", result=(1, 0))
    event = to_event(record, "w-1", None)
    assert (event.resolve.function, event.result.return_value) == ("gethostbyname_r", 1)


@pytest.mark.parametrize(
    ("function", "uids", "gids"),
    [
        ("setresuid", [-1, 0, -1], []),
        ("setuid", [1000], []),
        ("setreuid", [1, 2], []),
        ("seteuid", [0], []),
        ("setresgid", [], [-1, 0, -1]),
        ("setgid", [], [1000]),
        ("setregid", [], [1, 2]),
        ("setegid", [], [0]),
    ],
)
def test_credentials_put_ids_under_their_family(function: str, uids: list[int], gids: list[int]) -> None:
    event = to_event(
        rec(RecordKind.CREDENTIALS, function=function, ids=(*uids, *gids), result=(0, 0)), "w", None
    )
    assert event.WhichOneof("detail") == "credentials"
    cred = event.credentials
    assert (cred.function, list(cred.uids), list(cred.gids), list(cred.groups)) == (function, uids, gids, [])
    assert (event.result.known, event.result.return_value) == (True, 0)


def test_setgroups_carries_its_groups() -> None:
    event = to_event(
        rec(RecordKind.CREDENTIALS, function="setgroups", groups=(0, 10), result=(0, 0)), "w", None
    )
    cred = event.credentials
    assert (cred.function, list(cred.uids), list(cred.gids), list(cred.groups)) == (
        "setgroups",
        [],
        [],
        [0, 10],
    )


def test_ptrace_carries_request_and_target() -> None:
    event = to_event(rec(RecordKind.PTRACE, request=0, target_pid=0, result=(0, 0)), "w", None)
    assert event.WhichOneof("detail") == "ptrace"  # present even with all-zero values
    failed = to_event(rec(RecordKind.PTRACE, request=3, target_pid=4242, result=(-1, 3)), "w", None)
    assert (failed.ptrace.request, failed.ptrace.target_pid) == (3, 4242)
    assert (failed.result.return_value, failed.result.error_number) == (-1, 3)


def test_prctl_carries_option_and_argument() -> None:
    event = to_event(rec(RecordKind.PRCTL, option=4, argument=2**64 - 1, result=(0, 0)), "w", None)
    assert event.WhichOneof("detail") == "prctl"
    assert (event.prctl.option, event.prctl.argument) == (4, 2**64 - 1)


def test_memfd_carries_name_and_flags() -> None:
    event = to_event(rec(RecordKind.MEMFD, memfd_name="payload", memfd_flags=1, result=(3, 0)), "w", None)
    assert event.WhichOneof("detail") == "memfd"
    assert (event.memfd.name, event.memfd.flags) == ("payload", 1)
    empty = to_event(rec(RecordKind.MEMFD), "w", None)
    assert empty.WhichOneof("detail") == "memfd"


@pytest.mark.parametrize(
    ("flags", "write"),
    [
        (os.O_RDONLY, False),
        (os.O_RDONLY | os.O_CLOEXEC, False),
        (os.O_WRONLY, True),
        (os.O_RDWR, True),
        (os.O_RDONLY | os.O_CREAT, True),
        (os.O_RDONLY | os.O_TRUNC, True),
        (os.O_RDONLY | os.O_APPEND, True),
    ],
)
def test_file_open_carries_path_flags_mode_and_write(flags: int, write: bool) -> None:
    record = rec(
        RecordKind.FILE_OPEN,
        path="/etc/shadow",
        file_flags=flags,
        file_mode=0o600,
        function="openat",
        result=(3, 0),
    )
    event = to_event(record, "w", None)
    assert event.WhichOneof("detail") == "file"
    f = event.file
    assert (f.path, f.flags, f.mode, f.write, f.function) == ("/etc/shadow", flags, 0o600, write, "openat")
    assert (event.result.known, event.result.return_value) == (True, 3)


def test_file_change_carries_change_paths_and_mode() -> None:
    event = to_event(
        rec(RecordKind.FILE_CHANGE, change=FileChange.RENAME, path="/a", new_path="/etc/b"), "w", None
    )
    assert event.WhichOneof("detail") == "file_change"
    ch = event.file_change
    assert (ch.change, ch.path, ch.new_path, ch.mode) == (
        common_pb2.FILE_CHANGE_KIND_RENAME,
        "/a",
        "/etc/b",
        0,
    )
    chmod = to_event(
        rec(RecordKind.FILE_CHANGE, change=FileChange.CHMOD, path="/x", file_mode=0o4755), "w", None
    )
    assert (chmod.file_change.change, chmod.file_change.mode) == (common_pb2.FILE_CHANGE_KIND_CHMOD, 0o4755)
    assert to_event(rec(RecordKind.FILE_CHANGE), "w", None).WhichOneof("detail") == "file_change"


def test_failed_resolve_has_no_addresses() -> None:
    event = to_event(rec(RecordKind.RESOLVE, name="nowhere.invalid", result=(-2, 0)), "w-1", None)
    assert (event.resolve.name, list(event.resolve.addresses)) == ("nowhere.invalid", [])
    assert (event.result.known, event.result.return_value) == (True, -2)


def test_bind_carries_a_scoped_inet6_address() -> None:
    event = to_event(
        rec(RecordKind.BIND, sockaddr=decode_sockaddr(sockaddr_in6("fe80::1", 8080, scope=2)), result=(0, 0)),
        "w-1",
        None,
    )
    addr = event.socket.address
    assert (addr.family, addr.address, addr.port) == ("inet6", "fe80::1%2", 8080)
    assert event.result.known
    assert event.result.return_value == 0


def test_bind_carries_a_unix_path_without_port() -> None:
    event = to_event(rec(RecordKind.BIND, sockaddr=decode_sockaddr(sockaddr_un(b"/run/app.sock"))), "w", None)
    addr = event.socket.address
    assert (addr.family, addr.address, addr.port) == ("unix", "/run/app.sock", 0)


def test_listen_carries_its_backlog() -> None:
    event = to_event(
        rec(RecordKind.LISTEN, sockinfo=(socket.AF_INET6, socket.SOCK_STREAM, 0), backlog=511, result=(0, 0)),
        "w-1",
        None,
    )
    assert event.socket.backlog == 511
    assert event.socket.domain == socket.AF_INET6
    assert not event.socket.HasField("address")


def test_exec_carries_path_argv_variant_and_child() -> None:
    event = to_event(
        rec(
            RecordKind.EXEC,
            path="/bin/sh",
            argv=("sh", "-c", "id"),
            variant=ExecVariant.EXECVP,
            child_pid=4321,
        ),
        "w-1",
        None,
    )
    assert event.WhichOneof("detail") == "exec"
    assert (event.exec.path, list(event.exec.argv)) == ("/bin/sh", ["sh", "-c", "id"])
    assert event.exec.variant == common_pb2.EXEC_VARIANT_EXECVP
    assert event.exec.child_pid == 4321


@pytest.mark.parametrize("variant", list(ExecVariant))
def test_every_exec_variant_keeps_its_name(variant: ExecVariant) -> None:
    event = to_event(rec(RecordKind.EXEC, path="/bin/true", variant=variant), "w-1", None)
    assert common_pb2.ExecVariant.Name(event.exec.variant) == f"EXEC_VARIANT_{variant.name}"


def test_a_repeat_carries_its_flag_and_count() -> None:
    event = to_event(rec(RecordKind.CONNECT, RecordFlag.REPEAT | RecordFlag.TRUNCATED, count=17), "w-1", None)
    assert event.repeat
    assert event.count == 17
    assert event.truncated
    first = to_event(rec(RecordKind.CONNECT), "w-1", None)
    assert not first.repeat
    assert not first.truncated
    assert first.count == 1


def test_a_zero_count_is_reported_as_one() -> None:
    assert to_event(rec(RecordKind.CONNECT, count=0), "w-1", None).count == 1


def test_a_call_without_result_is_marked_unknown() -> None:
    assert not to_event(rec(RecordKind.CONNECT), "w-1", None).result.known


def test_known_process_details_enrich_the_event_but_the_record_ids_win() -> None:
    known = common_pb2.ProcessInfo(pid=1, ppid=1, tid=1, exe="/usr/sbin/nginx", argv=["nginx"], uid=33)
    event = to_event(rec(RecordKind.CONNECT), "w-1", known)
    proc = event.process
    assert (proc.exe, list(proc.argv), proc.uid) == ("/usr/sbin/nginx", ["nginx"], 33)
    assert (proc.pid, proc.ppid, proc.tid) == (300, 200, 301)
    assert known.pid == 1, "the agent's own record of the process is not changed"


@pytest.mark.parametrize(
    "process",
    [
        common_pb2.ProcessInfo(pid=9, ppid=8, tid=7, exe="/usr/sbin/nginx", argv=["nginx", ""], forked=True),
        common_pb2.ProcessInfo(),
        None,
    ],
    ids=["known", "empty", "none"],
)
@pytest.mark.parametrize("workload_id", ["w-1", "wörk", ""])
def test_an_event_prefix_joined_with_a_records_own_event_parses_to_to_events_event(
    process: common_pb2.ProcessInfo | None, workload_id: str
) -> None:
    """event_prefix carries exactly what to_event takes from its arguments; the record's ids win even
    when they are zero (which protobuf does not serialize)."""
    record = dataclasses.replace(
        rec(RecordKind.CONNECT, sockaddr=decode_sockaddr(sockaddr_in("10.0.0.1", 80))), pid=0, ppid=0, tid=0
    )
    own = to_event(record, "", None).SerializeToString()
    joined = common_pb2.Event.FromString(event_prefix(workload_id, process) + own)
    assert joined == to_event(record, workload_id, process)
    assert joined.HasField("process")
