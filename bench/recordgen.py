"""Shim records built byte by byte from shim/FORMAT.md (format v1), for feeding the agent.

Independent of the decoder on purpose: the benchmarks feed the agent what a shim would send.
"""

from __future__ import annotations

import socket
import struct
import time

from telltale.nodeagent import workload as descriptor
from telltale.v1 import common_pb2

MAGIC = 0x5454
VERSION = 1
PROC_START, EXEC, CONNECT = 1, 2, 3
EXE, ARGV, CWD, CREDS, SOCKADDR, RESULT, SOCKINFO = 1, 2, 3, 4, 5, 6, 7
WORKLOAD = 11
_HEADER = struct.Struct("<HBBHHIIIIQII")

BENCH_WORKLOAD = common_pb2.Workload(id="w-bench", application="bench", component="intake")


def field(tag: int, body: bytes) -> bytes:
    """One tag-length-value field."""
    return struct.pack("<HH", tag, len(body)) + body


def record(kind: int, *fields: bytes, pid: int, ppid: int = 1, seq: int = 1, count: int = 1) -> bytes:
    """A complete record: the 40-byte header (time: now) followed by `fields`."""
    body = b"".join(fields)
    header = _HEADER.pack(
        MAGIC, VERSION, kind, _HEADER.size + len(body), 0, pid, ppid, pid, count, time.time_ns(), 0, seq
    )
    return header + body


def sockaddr_in(ip: str, port: int) -> bytes:
    """struct sockaddr_in bytes: family in host order, port and address in network order."""
    return struct.pack("<H", socket.AF_INET) + struct.pack(">H", port) + socket.inet_aton(ip) + bytes(8)


def proc_start(pid: int, workload: common_pb2.Workload = BENCH_WORKLOAD) -> bytes:
    """A PROC_START as the shim sends it when it loads: credentials, workload, exe, cwd, argv."""
    return record(
        PROC_START,
        field(CREDS, struct.pack("<6I", 1000, 1000, 1000, 1000, 1000, 1000)),
        field(WORKLOAD, descriptor.encode(workload).encode()),
        field(EXE, b"/usr/bin/python3.11"),
        field(CWD, b"/srv/shop"),
        field(ARGV, b"python3\0-m\0shop.api\0--port\x008080\0"),
        pid=pid,
    )


def connect(pid: int, ip: str, port: int, seq: int = 2) -> bytes:
    """A CONNECT of a TCP socket that succeeded: RESULT, SOCKINFO, SOCKADDR."""
    return record(
        CONNECT,
        field(RESULT, struct.pack("<2i", 0, 0)),
        field(SOCKINFO, struct.pack("<3i", socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)),
        field(SOCKADDR, sockaddr_in(ip, port)),
        pid=pid,
        seq=seq,
    )


def connects(pid: int, n: int, first: int = 0) -> list[bytes]:
    """`n` CONNECT records to distinct addresses 10.x.y.z:443, numbered from `first`."""
    return [
        connect(pid, f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", 443, seq=2 + i - first)
        for i in range(first, first + n)
    ]
