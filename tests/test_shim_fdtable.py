"""The shim's table of socket types by descriptor: a descriptor number that changes socket type is
never keyed, nor reported, with its old type, however the number was freed and taken again; and a
dedup hit makes no system call of its own.

Runs tests/shim/fd_reuse.c and tests/shim/repeat_connect.c against the agent of tests/shimkit.py.
"""

from __future__ import annotations

import errno
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import shimkit
from shimkit import Agent, inet, needs_gcc, run, shim_env

from telltale.nodeagent.records import Record, RecordFlag, RecordKind, SockAddr

UDP = (socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
TCP = (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)

pytestmark = needs_gcc

agent = shimkit.agent
programs = shimkit.programs


@pytest.fixture
def listeners() -> Iterator[tuple[int, int]]:
    """Two loopback TCP listeners (ports A and B) held by the test."""
    with socket.socket() as a, socket.socket() as b:
        for s in (a, b):
            s.bind(("127.0.0.1", 0))
            s.listen(8)
        yield a.getsockname()[1], b.getsockname()[1]


def _connects(records: list[Record]) -> tuple[list[tuple[object, ...]], dict[tuple[object, ...], int]]:
    """First occurrences as (address, socket info, result), and repeat counts by (address, type)."""
    firsts: list[tuple[object, ...]] = []
    repeats: dict[tuple[object, ...], int] = {}
    for r in records:
        if r.kind != RecordKind.CONNECT:
            continue
        if r.flags & RecordFlag.REPEAT:
            assert r.sockinfo is not None
            key = (r.sockaddr, r.sockinfo[1])
            repeats[key] = repeats.get(key, 0) + r.count
        else:
            assert r.flags == RecordFlag(0)
            firsts.append((r.sockaddr, r.sockinfo, r.result))
    return firsts, repeats


@pytest.mark.parametrize(
    "mode", ["close", "close_range", "closefrom", "fclose", "socket", "dup2", "dup3", "dup", "fcntl"]
)
def test_reused_descriptor_is_keyed_by_its_new_type(
    agent: Agent, programs: dict[str, Path], tmp_path: Path, listeners: tuple[int, int], mode: str
) -> None:
    """A number that held a UDP socket and then a TCP one (freed and retaken by `mode`): the TCP
    connects to the same address are a behaviour of their own, reported as TCP, not UDP repeats."""
    port_a, port_b = listeners
    run(
        programs["fd_reuse"],
        mode,
        "127.0.0.1",
        str(port_a),
        str(port_b),
        env=shim_env(agent.path),
        cwd=tmp_path,
    )
    address: SockAddr = inet("127.0.0.1", port_a)
    firsts, repeats = _connects(agent.records())
    assert firsts == [(address, UDP, (0, 0)), (address, TCP, (0, 0))]
    assert repeats == {(address, socket.SOCK_DGRAM): 1, (address, socket.SOCK_STREAM): 1}


def test_number_reused_behind_the_shims_back_is_reported_with_its_real_type(
    agent: Agent, programs: dict[str, Path], tmp_path: Path, listeners: tuple[int, int]
) -> None:
    """Closed and re-created with raw system calls, so the table still says UDP: the first
    occurrence re-reads the type and reports TCP, and corrects the table, so that the next connect
    to the UDP socket's old address is a TCP behaviour too."""
    port_a, port_b = listeners
    run(
        programs["fd_reuse"],
        "raw",
        "127.0.0.1",
        str(port_a),
        str(port_b),
        env=shim_env(agent.path),
        cwd=tmp_path,
    )
    a, b = inet("127.0.0.1", port_a), inet("127.0.0.1", port_b)
    firsts, repeats = _connects(agent.records())
    assert firsts == [(a, UDP, (0, 0)), (b, TCP, (0, 0)), (a, TCP, (-1, errno.EISCONN))]
    assert repeats == {(a, socket.SOCK_DGRAM): 1, (a, socket.SOCK_STREAM): 1}


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace to count system calls")
def test_dedup_hit_makes_no_system_call_of_its_own(
    agent: Agent, programs: dict[str, Path], tmp_path: Path, listeners: tuple[int, int]
) -> None:
    """1000 UDP connects to one address, each on a new socket: the shim reads a socket's type and
    its pid a few times (first occurrence, flushes), not once per call."""
    port_a, _ = listeners
    trace = tmp_path / "trace"
    env = shim_env(agent.path)
    subprocess.run(
        [
            "strace",
            "-f",
            "-qq",
            "-e",
            "trace=getsockopt,getpid,connect",
            "-o",
            str(trace),
            *[f"-E{k}={v}" for k, v in env.items()],
            str(programs["repeat_connect"]),
            "127.0.0.1",
            str(port_a),
            "1000",
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
        timeout=60,
    )
    calls = [line.split("(", 1)[0].split()[-1] for line in trace.read_text().splitlines() if "(" in line]
    assert calls.count("connect") >= 1000
    assert calls.count("getsockopt") <= 10
    assert calls.count("getpid") <= 10
    firsts, repeats = _connects(agent.records())
    assert firsts == [(inet("127.0.0.1", port_a), UDP, (0, 0))]
    assert sum(repeats.values()) == 999
