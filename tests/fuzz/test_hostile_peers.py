"""Local processes that are not telltale workloads, speaking to a real intake on a real socket.

A stranger spewing garbage cannot stop the intake from serving a real workload under the shim
(everything it sends is counted); a process cannot make its records appear under another
workload, by the pid it writes in them or by the workload id it claims from another user; the
socket is what deploy/README.md says; a flood of connections beyond the cap is refused, counted,
and serving resumes once it ends.
"""

from __future__ import annotations

import base64
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
import trio.testing
from helpers import behave, eventually
from recordkit import fld, rec, sockaddr_in

from telltale._native import shim_path
from telltale.nodeagent import workload as descriptor
from telltale.nodeagent.batcher import Counters
from telltale.nodeagent.intake import Intake, Workloads
from telltale.nodeagent.launch import build_environment, new_workload
from telltale.nodeagent.records import FieldTag, RecordKind
from telltale.v1 import common_pb2

WITHIN_S = 30.0
NOBODY = 65534
FORGED_PORT = 6666

# A peer that is no workload: prints its pid, then sends each base64 message read from stdin on
# one connection to the socket named by argv[1] ("-" then holds the connection without sending),
# answering "ok" after each; exits when stdin ends. argv[2], when given, opens that many more
# connections first and holds them.
PEER = r"""
import base64, socket, sys
held = [socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(int(sys.argv[2]))]
for s in held:
    s.connect(sys.argv[1])
conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
conn.connect(sys.argv[1])
print(__import__("os").getpid(), flush=True)
for line in sys.stdin:
    if line.strip() != "-":
        conn.send(base64.b64decode(line))
    print("ok", flush=True)
"""


@dataclass
class Agent:
    path: Path
    counters: Counters = field(default_factory=Counters)
    workloads: Workloads = field(default_factory=Workloads)
    got: list[tuple[common_pb2.Event, str | None]] = field(default_factory=list)

    def sink(self, events: list[bytes], workload: common_pb2.Workload | None) -> None:
        self.got.extend((common_pb2.Event.FromString(e), workload.id if workload else None) for e in events)

    def of(self, workload_id: str | None) -> list[common_pb2.Event]:
        return [event for event, owner in self.got if owner == workload_id]


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every user may enter (pytest's tmp_path is root's alone), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="telltale-hostile-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Peer:
    """A running non-workload process holding a connection to the agent."""

    def __init__(self, path: Path, *, user: int | None = None, hold: int = 0) -> None:
        self.process = subprocess.Popen(
            # The system's python: another user may not be able to run this virtualenv's.
            [
                shutil.which("python3", path="/usr/bin:/bin") or sys.executable,
                "-c",
                PEER,
                str(path),
                str(hold),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            user=user,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},  # no shim: not a workload
        )
        assert self.process.stdout is not None
        self.pid = int(self.process.stdout.readline())

    def send(self, *messages: bytes) -> None:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        for message in messages:
            self.process.stdin.write(base64.b64encode(message).decode() + "\n")
            self.process.stdin.flush()
            assert self.process.stdout.readline() == "ok\n"

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=WITHIN_S)
        if self.process.stdout is not None:
            self.process.stdout.close()


def connect_record(pid: int, *, ppid: int = 1) -> bytes:
    return rec(
        fld(FieldTag.SOCKADDR, sockaddr_in("10.9.9.9", FORGED_PORT)),
        fld(FieldTag.RESULT, bytes(8)),
        kind=RecordKind.CONNECT,
        pid=pid,
        ppid=ppid,
        tid=pid,
        seq=2,
    )


def start_record(pid: int, workload: common_pb2.Workload) -> bytes:
    return rec(
        fld(FieldTag.EXE, b"/usr/bin/forger"),
        fld(FieldTag.WORKLOAD, descriptor.encode(workload).encode()),
        kind=RecordKind.PROC_START,
        pid=pid,
        tid=pid,
        seq=1,
    )


def start_victim(path: Path) -> tuple[subprocess.Popen[str], common_pb2.Workload]:
    """A real workload under the shim, driven line by line (tests/workloads/behave.py --stdin)."""
    workload = new_workload("victim", command=behave("--stdin"))
    env = build_environment({"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, workload, path, shim_path())
    process = subprocess.Popen(
        list(workload.command), env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    return process, workload


def command(process: subprocess.Popen[str], line: str) -> None:
    assert process.stdin is not None
    assert process.stdout is not None
    process.stdin.write(line + "\n")
    process.stdin.flush()
    assert process.stdout.readline() == "ok\n"


def stop(process: subprocess.Popen[str]) -> None:
    if process.stdin is not None:
        process.stdin.close()
    process.wait(timeout=WITHIN_S)
    if process.stdout is not None:
        process.stdout.close()


def shells(agent: Agent, workload_id: str, tag: str) -> int:
    return sum(
        1
        for event in agent.of(workload_id)
        if event.kind == common_pb2.EVENT_KIND_EXEC and any(tag in arg for arg in event.exec.argv)
    )


async def start_agent(nursery: trio.Nursery, path: Path, **options: object) -> Agent:
    agent = Agent(path)
    intake = Intake(path, agent.sink, agent.counters, agent.workloads, **options)  # type: ignore[arg-type]
    await nursery.start(intake.run)
    return agent


@trio.testing.trio_test
async def test_garbage_from_a_stranger_is_counted_while_a_real_workload_is_served(tmp_path: Path) -> None:
    """Thousands of messages of random sizes (0 to 6000 bytes, none with the record magic) from a
    process that is no workload, sent while a real workload reports: each counted as malformed,
    the workload's events all attributed to it."""
    rng = __import__("random").Random(0xBAD)
    garbage = []
    for _ in range(3000):
        message = bytearray(rng.randbytes(rng.choice([rng.randrange(0, 48), rng.randrange(0, 6001)])))
        if len(message) >= 2 and message[:2] == b"TT":
            message[0] = 0
        garbage.append(bytes(message))
    garbage = [m for m in garbage if m]  # an empty message is covered by the intake's own tests
    async with trio.open_nursery() as nursery:
        agent = await start_agent(nursery, tmp_path / "agent.sock")
        victim, workload = start_victim(agent.path)
        stranger = Peer(agent.path)
        try:
            for n, chunk in enumerate(range(0, len(garbage), 500)):
                await trio.to_thread.run_sync(stranger.send, *garbage[chunk : chunk + 500])
                await trio.to_thread.run_sync(command, victim, f"shell round-{n}")
            await eventually(
                lambda: agent.counters.malformed == len(garbage), "the garbage counted", WITHIN_S
            )
            for n in range(len(range(0, len(garbage), 500))):
                await eventually(
                    lambda n=n: shells(agent, workload.id, f"round-{n}") == 1, f"shell {n}", WITHIN_S
                )
        finally:
            stranger.close()
            stop(victim)
        assert all(e.workload_id == workload.id for e in agent.of(workload.id))
        assert agent.counters.malformed == len(garbage), "the workload sent nothing malformed"
        nursery.cancel_scope.cancel()


@trio.testing.trio_test
async def test_a_process_cannot_pass_its_records_off_as_another_workloads_process(tmp_path: Path) -> None:
    """A stranger writing a real workload process's pid in its records (and that process as their
    parent): before, its connection was adopted into that workload; now each such record is dropped
    and counted, and its own records stay unattributed."""
    async with trio.open_nursery() as nursery:
        agent = await start_agent(nursery, tmp_path / "agent.sock")
        victim, workload = start_victim(agent.path)
        stranger = Peer(agent.path)
        try:
            await trio.to_thread.run_sync(command, victim, "shell before")
            await eventually(lambda: victim.pid in agent.workloads.by_pid, "the victim tracked", WITHIN_S)
            before = agent.counters.malformed
            forged = [connect_record(victim.pid), connect_record(victim.pid, ppid=victim.pid)]
            await trio.to_thread.run_sync(stranger.send, *forged)
            await eventually(
                lambda: agent.counters.malformed == before + 2, "the forged records counted", WITHIN_S
            )
            await trio.to_thread.run_sync(stranger.send, connect_record(stranger.pid, ppid=victim.pid))
            await eventually(lambda: len(agent.of(None)) == 1, "the stranger's own record", WITHIN_S)
            await trio.to_thread.run_sync(command, victim, "shell after")
            await eventually(lambda: shells(agent, workload.id, "after") == 1, "the victim served", WITHIN_S)
        finally:
            stranger.close()
            stop(victim)
        (own,) = agent.of(None)
        assert own.process.pid == stranger.pid
        assert not [e for e in agent.of(workload.id) if e.socket.address.port == FORGED_PORT]
        assert agent.workloads.by_pid.get(stranger.pid) is None
        nursery.cancel_scope.cancel()


@pytest.mark.skipif(os.geteuid() != 0, reason="runs a process as another user")
@trio.testing.trio_test
async def test_another_users_process_cannot_claim_a_live_workloads_id(shared_dir: Path) -> None:
    """A process of another user that knows a live workload's id sends a start record naming it:
    the claim is refused and counted, and its records stay unattributed."""
    async with trio.open_nursery() as nursery:
        agent = await start_agent(nursery, shared_dir / "agent.sock")
        victim, workload = start_victim(agent.path)
        try:
            await trio.to_thread.run_sync(command, victim, "shell before")
            await eventually(lambda: workload.id in agent.workloads.by_id, "the victim registered", WITHIN_S)
            stranger = Peer(agent.path, user=NOBODY)
            try:
                before = agent.counters.malformed
                claim = common_pb2.Workload(id=workload.id, application="victim")
                await trio.to_thread.run_sync(
                    stranger.send, start_record(stranger.pid, claim), connect_record(stranger.pid)
                )
                await eventually(lambda: len(agent.of(None)) == 2, "the stranger's records", WITHIN_S)
                assert agent.counters.malformed == before + 1, "the refused claim is counted"
                assert agent.workloads.uids[workload.id] == {os.geteuid(): 1}
            finally:
                stranger.close()
        finally:
            stop(victim)
        assert not [e for e in agent.of(workload.id) if e.socket.address.port == FORGED_PORT]
        assert all(e.workload_id == "" for e in agent.of(None))
        nursery.cancel_scope.cancel()


@trio.testing.trio_test
async def test_the_socket_is_a_world_writable_socket_of_the_agents_user(shared_dir: Path) -> None:
    """deploy/README.md: workloads of every user connect (mode 0666, in a 0755 directory)."""
    async with trio.open_nursery() as nursery:
        agent = await start_agent(nursery, shared_dir / "run" / "agent.sock")
        info = agent.path.lstat()
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o666
        assert (info.st_uid, info.st_gid) == (os.geteuid(), os.getegid())
        nursery.cancel_scope.cancel()
    assert not agent.path.exists(), "removed when the intake stops"


@trio.testing.trio_test
async def test_a_connection_flood_is_refused_and_counted_and_serving_resumes(tmp_path: Path) -> None:
    """A stranger holding more connections than the cap: the excess is closed at once and counted;
    once it is gone a real workload is served."""
    cap = 16
    async with trio.open_nursery() as nursery:
        agent = await start_agent(nursery, tmp_path / "agent.sock", max_connections=cap)
        flood = Peer(agent.path, hold=cap + 24)
        try:
            await eventually(lambda: agent.counters.refused_connections >= 25, "the excess refused", WITHIN_S)
        finally:
            flood.close()
        assert agent.counters.refused_connections == 25
        victim, workload = start_victim(agent.path)
        try:
            await trio.to_thread.run_sync(command, victim, "shell after-flood")
            await eventually(lambda: shells(agent, workload.id, "after-flood") == 1, "the workload", WITHIN_S)
        finally:
            stop(victim)
        nursery.cancel_scope.cancel()
