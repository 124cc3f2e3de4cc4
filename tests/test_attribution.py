"""Every event of a workload reaches the sink with that workload, however late the agent reads.

Real workloads under the real shim report to an in-process intake: `behave.py --shell` starts
`/bin/sh -c true` through Python's subprocess (vfork, descriptors closed, then exec) and exits at
once. The exec is reported by the vfork child on a connection of its own, opened after the parent's
and closed before the parent exits; nothing orders what the agent reads from different
connections, so the parent's connection may be gone (and its workload forgotten) before the
child's record is read, or not read yet.

Two ways to be late are covered, on both decoding paths:
- the agent is busy while each workload runs from start to exit (its event loop blocked), so it
  finds every connection already closed;
- bursts of workloads run at once while the agent keeps reading but lags behind.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
import trio.testing
from helpers import behave, eventually

from telltale._native import shim_path
from telltale.nodeagent.batcher import Counters
from telltale.nodeagent.intake import Intake, Workloads
from telltale.nodeagent.launch import build_environment, new_workload
from telltale.v1 import common_pb2

try:
    from telltale._native import _records as native_records
except ImportError:  # not built: only the Python path is tested
    native_records = None  # type: ignore[assignment]

pytestmark = pytest.mark.parametrize(
    "native",
    [
        pytest.param(False, id="python"),
        pytest.param(
            True,
            id="native",
            marks=pytest.mark.skipif(native_records is None, reason="telltale._native._records is not built"),
        ),
    ],
)

SHELL = "/bin/sh"
WITHIN_S = 30.0
BUSY_S = 0.02


@dataclass
class Run:
    """One workload: the process `telltale run` would have exec'd, and what it was tied to."""

    workload: common_pb2.Workload
    pid: int = 0


@dataclass
class Sink:
    got: list[tuple[common_pb2.Event, common_pb2.Workload | None]] = field(default_factory=list)

    def __call__(self, events: list[bytes] | common_pb2.Event, workload: common_pb2.Workload | None) -> None:
        """Takes a run of serialized events of one workload, or a single event."""
        if isinstance(events, common_pb2.Event):
            self.got.append((events, workload))
        else:
            self.got.extend((common_pb2.Event.FromString(data), workload) for data in events)


def workload_env(run: Run, socket_path: Path) -> dict[str, str]:
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    return build_environment(base, run.workload, socket_path, shim_path())


def new_run(i: int) -> Run:
    return Run(new_workload(f"app-{i}", command=behave("--shell")))


def belongs(event: common_pb2.Event, run: Run) -> bool:
    """The workload process itself, or a child of it (the shell, and the vfork child before exec)."""
    return run.pid in (event.process.pid, event.process.ppid)


def shell_launched(sink: Sink, run: Run) -> bool:
    """The exec of the shell and the shell's own start have both arrived."""
    execs = starts = False
    for event, _ in sink.got:
        if event.process.ppid != run.pid:
            continue
        if event.kind == common_pb2.EVENT_KIND_EXEC and event.exec.path == SHELL:
            execs = True
        elif event.kind == common_pb2.EVENT_KIND_PROCESS_START and event.process.exe.endswith("sh"):
            starts = True
    return execs and starts


async def settle(sink: Sink, workloads: Workloads, runs: Iterable[Run]) -> None:
    """Wait until each run's shell is reported and every connection is closed and read out."""
    runs = list(runs)
    await eventually(lambda: all(shell_launched(sink, r) for r in runs), "the shells' events", WITHIN_S)
    await eventually(
        lambda: workloads.active == 0 and not workloads.by_pid, "every connection read", WITHIN_S
    )


def misattributed(sink: Sink, runs: Iterable[Run]) -> list[str]:
    """Events handed to the sink without their run's workload, described."""
    wrong: list[str] = []
    for run in runs:
        for event, workload in sink.got:
            if not belongs(event, run):
                continue
            if workload is None or workload.id != run.workload.id or event.workload_id != run.workload.id:
                kind = common_pb2.EventKind.Name(event.kind)
                what = event.exec.path if event.kind == common_pb2.EVENT_KIND_EXEC else event.process.exe
                wrong.append(
                    f"{kind} {what} pid {event.process.pid} ppid {event.process.ppid}: "
                    f"sink got {workload.application if workload else None!r}, "
                    f"want {run.workload.application!r}"
                )
    return wrong


def launch(run: Run, socket_path: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        run.workload.command,
        env=workload_env(run, socket_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    run.pid = process.pid
    return process


def finish(process: subprocess.Popen[bytes]) -> None:
    _, err = process.communicate(timeout=WITHIN_S)
    assert process.returncode == 0, err


async def hog() -> None:
    """Keep the agent's loop busy, BUSY_S at a time, as a slow spool or a burst of batches would."""
    while True:
        until = time.monotonic() + BUSY_S
        while time.monotonic() < until:
            pass
        await trio.lowlevel.checkpoint()


@trio.testing.trio_test
async def test_a_shell_launched_by_a_workload_that_exits_before_the_agent_reads_keeps_its_workload(
    tmp_path: Path, native: bool
) -> None:
    """Each workload starts, launches its shell and exits while the agent is busy (its loop is
    blocked), so every one of its connections is closed when the agent gets to it."""
    sink, workloads = Sink(), Workloads()
    path = tmp_path / "agent.sock"
    runs = [new_run(i) for i in range(6)]
    async with trio.open_nursery() as nursery:
        await nursery.start(Intake(path, sink, Counters(), workloads, native=native).run)
        for run in runs:
            finish(launch(run, path))  # blocks the agent's event loop for the workload's whole life
            await settle(sink, workloads, [run])
        nursery.cancel_scope.cancel()
    assert misattributed(sink, runs) == []
    python_starts = [
        event
        for run in runs
        for event, _ in sink.got
        if event.kind == common_pb2.EVENT_KIND_PROCESS_START
        and event.process.ppid == run.pid
        and not event.process.exe.endswith("sh")
    ]
    assert len(python_starts) == len(runs), "each vfork child's connection starts with its own start"
    assert all(event.process.forked for event in python_starts), "start rules skip it, as a fork child's"


@trio.testing.trio_test
async def test_bursts_of_short_workloads_launching_shells_keep_their_workloads(
    tmp_path: Path, native: bool
) -> None:
    """Rounds of workloads started together, each launching a shell and exiting at once, while
    the agent keeps reading but lags behind (another task holds its loop for BUSY_S at a time)."""
    sink, workloads = Sink(), Workloads()
    path = tmp_path / "agent.sock"
    runs: list[Run] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(Intake(path, sink, Counters(), workloads, native=native).run)
        nursery.start_soon(hog)
        for round_ in range(6):
            batch = [new_run(round_ * 100 + i) for i in range(8)]
            processes = [launch(run, path) for run in batch]
            for process in processes:
                await trio.to_thread.run_sync(finish, process)
            runs.extend(batch)
            await settle(sink, workloads, batch)
        nursery.cancel_scope.cancel()
    assert misattributed(sink, runs) == []
