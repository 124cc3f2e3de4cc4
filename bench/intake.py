"""Throughput of the agent's record intake: the real `Intake` (trio) fed by sender processes.

Each sender process connects to the intake's SOCK_SEQPACKET socket, sends a PROC_START carrying a
workload descriptor, waits for a go signal, then sends pre-encoded CONNECT records with blocking
sends, as fast as the socket takes them. The intake runs in this process, on one thread; the
figure is events delivered to the sink per second. Goal: 300k records/s on one core.

Run alone: `python -m bench.intake [--quick]`. `--send PATH COUNT` is the sender's own entry point.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import os
import pstats
import re
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import trio

from bench import recordgen
from bench.results import Section, Table, goal, median, rate, say
from telltale.nodeagent.batcher import Batcher, Counters, Spool
from telltale.nodeagent.intake import Intake, Workloads
from telltale.v1 import common_pb2

GOAL_RECORDS_PER_S = 300_000
REPO = Path(__file__).resolve().parent.parent
ADDRESSES = 1000  # distinct destinations per sender, repeated
TIMEOUT_S = 300.0


# ---- sender (a separate process) ---------------------------------------------------------------


def send(path: str, count: int) -> None:
    """Connect, send PROC_START, wait for a line on stdin, send `count` CONNECT records, exit."""
    pid = os.getpid()
    pool = recordgen.connects(pid, ADDRESSES)
    records = (pool * (count // len(pool) + 1))[:count]
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        sock.connect(path)
        sock.sendall(recordgen.proc_start(pid))
        sys.stdin.readline()
        out = sock.send
        for r in records:
            out(r)


# ---- the measurement ---------------------------------------------------------------------------


@dataclass
class Outcome:
    """One measured run."""

    senders: int
    sent: int
    delivered: int
    seconds: float
    cpu_share: float
    malformed: int
    dropped: int

    @property
    def per_second(self) -> float:
        return self.delivered / self.seconds if self.seconds > 0 else 0.0


class _Sink:
    """Counts events, optionally feeding the agent's batcher; `ready` is set once every sender's
    start record has arrived, `done` once every record has."""

    def __init__(self, senders: int, target: int, batcher: Batcher | None) -> None:
        self.senders = senders
        self.target = target
        self.count = 0
        self.done_at = 0.0
        self.ready = trio.Event()
        self.done = trio.Event()
        self._batcher = batcher

    def __call__(self, event: common_pb2.Event, workload: common_pb2.Workload | None) -> None:
        if self._batcher is not None:
            self._batcher.add(event, workload, trio.current_time())
        self.count += 1
        if self.count == self.senders:
            self.ready.set()
        if self.count == self.target:
            self.done_at = time.perf_counter()
            self.done.set()


def _spawn_sender(path: Path, count: int) -> subprocess.Popen[bytes]:
    paths = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
    return subprocess.Popen(
        [sys.executable, "-m", "bench.intake", "--send", str(path), str(count)],
        cwd=REPO,
        env=env,
        stdin=subprocess.PIPE,
    )


async def _measure(
    workdir: Path,
    senders: int,
    per_sender: int,
    *,
    batching: bool = False,
    profiler: cProfile.Profile | None = None,
) -> Outcome:
    """One run; `profiler`, if given, is enabled from the go signal to the last event.

    Raises trio.TooSlowError when the records do not all arrive within TIMEOUT_S.
    """
    path = workdir / f"agent-{senders}-{int(batching)}.sock"
    counters = Counters()
    spool = Spool(capacity=1 << 20, counters=counters)
    sink = _Sink(senders, senders * (1 + per_sender), Batcher(spool) if batching else None)
    intake = Intake(path, sink, counters, Workloads())
    processes: list[subprocess.Popen[bytes]] = []
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(intake.run)
            processes = [_spawn_sender(path, per_sender) for _ in range(senders)]
            with trio.fail_after(TIMEOUT_S):
                await sink.ready.wait()
            if profiler is not None:
                profiler.enable()
            cpu0, start = time.process_time(), time.perf_counter()
            for process in processes:
                assert process.stdin is not None
                process.stdin.write(b"go\n")
                process.stdin.close()
            with trio.fail_after(TIMEOUT_S):
                await sink.done.wait()
            cpu = time.process_time() - cpu0
            if profiler is not None:
                profiler.disable()
            nursery.cancel_scope.cancel()
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
    seconds = sink.done_at - start
    return Outcome(
        senders=senders,
        sent=senders * per_sender,
        delivered=sink.count - senders,
        seconds=seconds,
        cpu_share=cpu / seconds if seconds > 0 else 0.0,
        malformed=counters.malformed,
        dropped=counters.dropped,
    )


def _where(key: tuple[str, int, str]) -> str:
    """A readable name for a pstats function key: 'path:line name', paths short."""
    filename, line, name = key
    if filename == "~":
        return name
    filename = re.sub(r"^.*/(site-packages|lib/python3\.\d+)/", "", filename)
    with contextlib.suppress(ValueError):
        filename = str(Path(filename).resolve().relative_to(REPO))
    return f"{filename}:{line} {name}"


def _profile(workdir: Path, per_sender: int) -> tuple[Table, str]:
    """Profile a run of two senders with cProfile: the functions with the most own time, and a note
    with the share of the per-record steps."""
    profiler = cProfile.Profile()
    trio.run(functools.partial(_measure, workdir, 2, per_sender, profiler=profiler))
    entries: dict[tuple[str, int, str], tuple[int, int, float, float, object]]
    entries = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in entries.values()) or 1.0
    table = Table(
        ("function (cProfile, 2 senders, counting sink)", "own time", "with callees"),
        title="Where the intake spends its time",
    )
    for key, entry in sorted(entries.items(), key=lambda item: item[1][2], reverse=True)[:8]:
        table.add(_where(key), f"{entry[2] / total:.0%}", f"{entry[3] / total:.0%}")

    def share(name: str) -> str:
        cumulative = max(
            (v[3] for k, v in entries.items() if k[2] == name and "nodeagent" in k[0]), default=0
        )
        return f"`{name}` {cumulative / total:.0%}"

    note = (
        "Profiled with cProfile during the measured window (cProfile inflates the cost of Python "
        "calls). Shares of the time, with callees: "
        + ", ".join(share(n) for n in ("_handle", "decode", "to_event"))
        + " — `_handle` is the intake's whole per-record work after `recv`, `decode` the record "
        "decoder, `to_event` the conversion to a protobuf Event."
    )
    return table, note


def _senders(n: int) -> str:
    return f"{n} sender" if n == 1 else f"{n} senders"


def _sink_name(batching: bool) -> str:
    return "agent's batcher (256-event batches)" if batching else "counting"


def run(quick: bool = False) -> Section:
    """Rounds of one run per configuration (senders, sink), interleaved; medians and ratios to the
    first configuration; then a profiled run."""
    total, rounds = (40_000, 1) if quick else (120_000, 3)
    configs = [(2, False), (2, True)] if quick else [(1, False), (4, False), (4, True)]
    outcomes: dict[tuple[int, bool], list[Outcome]] = {config: [] for config in configs}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="telltale-bench-") as tmp:
        workdir = Path(tmp)
        for n in range(rounds):
            for senders, batching in configs:
                outcome = trio.run(
                    functools.partial(_measure, workdir, senders, total // senders, batching=batching)
                )
                outcomes[senders, batching].append(outcome)
                say(
                    f"  intake    round {n + 1}/{rounds}: {_senders(senders)}, {_sink_name(batching):36} "
                    f"{rate(outcome.per_second):>10}  ({outcome.cpu_share:.0%} of a core)"
                )
        profile_table, profile_note = _profile(workdir, 10_000 if quick else 25_000)

    table = Table(
        (
            "senders",
            "sink",
            "records delivered",
            "records/s (median)",
            "vs first row",
            "intake CPU",
            "malformed",
            "dropped",
            "goal ≥ 300k/s",
        )
    )
    first = outcomes[configs[0]]
    best = 0.0
    for (senders, batching), runs in outcomes.items():
        per_s = median([o.per_second for o in runs])
        best = max(best, per_s)
        ratio = median([o.per_second / b.per_second for o, b in zip(runs, first, strict=True)])
        table.add(
            str(senders),
            _sink_name(batching),
            f"{sum(o.delivered for o in runs):,} of {sum(o.sent for o in runs):,}",
            rate(per_s),
            "—" if runs is first else f"{ratio:.2f}x",
            f"{median([o.cpu_share for o in runs]):.0%} of a core",
            str(sum(o.malformed for o in runs)),
            str(sum(o.dropped for o in runs)),
            goal(per_s >= GOAL_RECORDS_PER_S),
        )
    for senders_cell, sink, _records, figure, versus, cpu, *_rest in table.rows:
        who = _senders(int(senders_cell))
        say(f"  intake    {who:10} {sink:36} {figure:>10}  (vs first row {versus}, {cpu})")
    for function, own, inclusive in profile_table.rows:
        say(f"  intake    profile: {own:>4} own, {inclusive:>4} with callees  {function}")
    notes = [
        f"Best figure {rate(best)}: the goal of 300k records/s on one core is "
        f"{goal(best >= GOAL_RECORDS_PER_S)}. 'intake CPU' is this process's CPU time over the "
        "run: near 100% means the intake, not the senders, sets the pace.",
        profile_note,
    ]
    for note in notes:
        say(f"  intake    {note}")
    return Section(
        title="Agent intake throughput",
        method=(
            "The real `Intake` (trio) on a SOCK_SEQPACKET socket in a temporary directory, fed by "
            "sender processes that each send a PROC_START with a workload descriptor and then "
            f"pre-encoded CONNECT records ({ADDRESSES} distinct addresses, repeated) with blocking sends, "
            f"{total:,} records per run, {rounds} round{'s' if rounds > 1 else ''} of the configurations "
            "(interleaved when more than one). The "
            "figure is events delivered to the sink per second, from the go signal to the last event "
            "(median over rounds); 'malformed' and 'dropped' are the intake's counters."
        ),
        tables=[table, profile_table],
        notes=notes,
        seconds=time.perf_counter() - started,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer records and configurations")
    parser.add_argument("--send", nargs=2, metavar=("PATH", "COUNT"), help="act as one sender")
    args = parser.parse_args()
    if args.send:
        send(args.send[0], int(args.send[1]))
    else:
        run(args.quick)


if __name__ == "__main__":
    main()
