"""Throughput of the agent's record intake: the real `Intake` (trio) fed by sender processes.

Each sender process connects to the intake's SOCK_SEQPACKET socket, sends a PROC_START carrying a
workload descriptor, waits for a go signal, then sends pre-encoded CONNECT records with blocking
sends, as fast as the socket takes them. Senders are bench/intake_sender.c (built with gcc; it
sends with sendmmsg), or this module's Python sender when gcc is missing. The intake runs in this
process, on one thread, with its native decoding path and, for comparison, its Python one. The sink
either counts events (the intake alone) or is the agent's way to the controller: the real `Batcher`
and an on-disk `Spool` in a temporary directory, every batch acknowledged once made, and in one
configuration first read back from the spool (parsed) as the agent's sender does; the figure is
then the events the spool kept (or gave back) per second. Goal: 300k records/s on one core end to
end (intake, batcher, on-disk spool), RSS ≤ 60 MiB.

Run alone: `python -m bench.intake [--quick]`. `--send PATH COUNT` is the Python sender's entry point.
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
from typing import Literal

import trio

from bench import recordgen
from bench.cbuild import BuildError, compile_program
from bench.results import Section, Table, goal, median, rate, say
from telltale.nodeagent.batcher import Batcher, Counters
from telltale.nodeagent.intake import Intake, Workloads
from telltale.nodeagent.spool import Spool
from telltale.v1 import common_pb2

try:
    from telltale._native import _records as native_records
except ImportError:  # not built: only the Python path is measured
    native_records = None  # type: ignore[assignment]

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
    rss_mb: float
    peak_rss_mb: float

    @property
    def per_second(self) -> float:
        return self.delivered / self.seconds if self.seconds > 0 else 0.0

    @property
    def per_cpu_second(self) -> float:
        """Records per second of the intake's own CPU time: the rate one core fully given to it
        would reach (the senders share the machine's cores with it)."""
        cpu = self.cpu_share * self.seconds
        return self.delivered / cpu if cpu > 0 else 0.0


Sink = Literal["count", "spool", "send"]
SINK_NAMES: dict[Sink, str] = {
    "count": "counting",
    "spool": "batcher + on-disk spool",
    "send": "batcher + spool + sender's read",
}


class _CountingSpool:
    """The spool as the batcher sees it (BatchSink), counting the events of the batches it keeps."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.counters = spool.counters
        self.events = 0

    @property
    def full(self) -> bool:
        return self.spool.full

    def append_serialized(self, payload: bytes, *, events: int, dropped: int, malformed: int) -> bool:
        kept = self.spool.append_serialized(payload, events=events, dropped=dropped, malformed=malformed)
        if kept:
            self.events += events
        return kept


class _Sink:
    """Counts events ("count"), or takes them the agent's way to the controller: the batcher, fed
    as the agent feeds it (one clock reading per run of events), and the on-disk spool, each batch
    acknowledged once made, as by a controller keeping up ("spool"), after being read back from the
    spool as the agent's sender does ("send": the batch parsed). `ready` is set once every sender's
    start record has arrived; `done` once every record has, and through the batcher once the last
    batch is closed (at once rather than at its age limit). `spooled` counts the events of the
    batches the spool kept ("spool") or of those read back ("send")."""

    def __init__(self, senders: int, target: int, kind: Sink, spool: Spool) -> None:
        self.senders = senders
        self.target = target
        self.count = 0
        self.done_at = 0.0
        self.ready = trio.Event()
        self.done = trio.Event()
        self._kind = kind
        self._spool = spool
        self._counting = _CountingSpool(spool)
        self._batcher = None if kind == "count" else Batcher(self._counting)
        self._next_seq = spool.next_seq
        self._read = 0

    @property
    def spooled(self) -> int:
        return self._read if self._kind == "send" else self._counting.events

    def __call__(self, events: list[bytes], workload: common_pb2.Workload | None) -> None:
        batcher = self._batcher
        if batcher is not None:
            batcher.extend(events, workload, trio.current_time())
        self.count += len(events)
        if not self.ready.is_set() and self.count >= self.senders:
            self.ready.set()
        if batcher is not None and self.count >= self.target:
            batcher.flush()
        if batcher is not None and self._spool.next_seq != self._next_seq:  # batches were made
            self._acknowledge()
        if self.count >= self.target and not self.done.is_set():
            self.done_at = time.perf_counter()
            self.done.set()

    def _acknowledge(self) -> None:
        spool = self._spool
        if self._kind == "send":
            for seq in range(self._next_seq, spool.next_seq):
                batch = spool.read(seq)
                if batch is not None:
                    self._read += len(batch.events)
        self._next_seq = spool.next_seq
        spool.ack(self._next_seq - 1)


def _rss_mb() -> float:
    """This process's resident set size now, in MiB (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0


def _peak_rss_mb() -> float:
    """The highest resident set size this process has had so far (VmHWM), in MiB (0 where /proc is
    missing)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@dataclass(frozen=True)
class Senders:
    """How sender processes are started: the C sender (bench/intake_sender.c) with its records
    file, or, when it could not be built, this module's Python sender."""

    program: Path | None = None
    records: Path | None = None

    @classmethod
    def prepare(cls, workdir: Path) -> Senders:
        """Build the C sender and write its records file in `workdir`; Python senders when gcc fails."""
        try:
            program = compile_program("intake_sender.c", workdir)
        except BuildError as exc:
            say(f"  intake    Python senders: {str(exc).splitlines()[0]}")
            return cls()
        records = workdir / "records.bin"
        pool = [recordgen.proc_start(0), *recordgen.connects(0, ADDRESSES)]
        records.write_bytes(b"".join(len(r).to_bytes(2, "little") + r for r in pool))
        return cls(program, records)

    @property
    def name(self) -> str:
        return "C (sendmmsg)" if self.program else "Python (send)"

    def spawn(self, path: Path, count: int) -> subprocess.Popen[bytes]:
        """Start one sender of `count` records to the intake at `path`; it waits for a go line."""
        if self.program is None or self.records is None:
            return _spawn_sender(path, count)
        return subprocess.Popen(
            [str(self.program), str(path), str(self.records), str(count)], stdin=subprocess.PIPE
        )


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
    sink_kind: Sink = "count",
    native: bool = True,
    senders_kind: Senders | None = None,
    profiler: cProfile.Profile | None = None,
) -> Outcome:
    """One run; `profiler`, if given, is enabled from the go signal to the last event. `native`:
    the intake's native decoding path (False: the Python path).

    Raises trio.TooSlowError when the records do not all arrive within TIMEOUT_S.
    """
    path = workdir / f"agent-{senders}-{sink_kind}-{int(native)}.sock"
    counters = Counters()
    spool = Spool(Path(tempfile.mkdtemp(prefix="spool-", dir=workdir)), counters=counters)
    sink = _Sink(senders, senders * (1 + per_sender), sink_kind, spool)
    intake = Intake(path, sink, counters, Workloads(), native=native)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(intake.run)
            spawner = senders_kind or Senders()
            processes = [spawner.spawn(path, per_sender) for _ in range(senders)]
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
        spool.close()
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
    seconds = sink.done_at - start
    return Outcome(
        senders=senders,
        sent=senders * per_sender,
        # Through the batcher, only what reached the spool (or was read back) counts as delivered.
        delivered=(sink.count if sink_kind == "count" else sink.spooled) - senders,
        seconds=seconds,
        cpu_share=cpu / seconds if seconds > 0 else 0.0,
        malformed=counters.malformed,
        dropped=counters.dropped,
        rss_mb=_rss_mb(),
        peak_rss_mb=_peak_rss_mb(),
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


def _profile(workdir: Path, per_sender: int, native: bool, senders: Senders) -> tuple[Table, str]:
    """Profile a run of two senders through the batcher and the on-disk spool with cProfile: the
    functions with the most own time, and a note with the share of the per-record steps."""
    profiler = cProfile.Profile()
    trio.run(
        functools.partial(
            _measure,
            workdir,
            2,
            per_sender,
            sink_kind="send",
            native=native,
            senders_kind=senders,
            profiler=profiler,
        )
    )
    entries: dict[tuple[str, int, str], tuple[int, int, float, float, object]]
    entries = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in entries.values()) or 1.0
    table = Table(
        ("function (cProfile, 2 senders, batcher and spool)", "own time", "with callees"),
        title=f"Where the intake spends its time ({_path_name(native)})",
    )
    for key, entry in sorted(entries.items(), key=lambda item: item[1][2], reverse=True)[:8]:
        table.add(_where(key), f"{entry[2] / total:.0%}", f"{entry[3] / total:.0%}")

    def share(name: str) -> str:
        cumulative = max(
            (v[3] for k, v in entries.items() if k[2] == name and "nodeagent" in k[0]), default=0
        )
        return f"`{name}` {cumulative / total:.0%}"

    after = ", ".join(share(n) for n in ("extend", "flush", "append_serialized", "read"))
    downstream = (
        f"; downstream of the intake, {after} — `extend` the batcher's intake of runs (closing full "
        "batches), `flush` closing a batch (framing included), `append_serialized` the spool's write, "
        "`read` the sender's read-back (parsing the batch)."
    )
    if native:
        steps = ", ".join(share(n) for n in ("_drain_native", "_handle"))
        meaning = (
            " — `_drain_native` is the intake's whole work per wake-up (native reading and encoding "
            "included, and the sink it calls), `_handle` the Python path taken by records the native "
            f"one hands back (process starts){downstream}"
        )
    else:
        steps = ", ".join(share(n) for n in ("_handle", "decode", "to_event"))
        meaning = (
            " — `_handle` is the intake's whole per-record work after `recv`, `decode` the record "
            f"decoder, `to_event` the conversion to a protobuf Event{downstream}"
        )
    note = (
        "Profiled with cProfile during the measured window (cProfile inflates the cost of Python "
        f"calls). Shares of the time, with callees: {steps}{meaning}"
    )
    return table, note


def _senders(n: int) -> str:
    return f"{n} sender" if n == 1 else f"{n} senders"


def _path_name(native: bool) -> str:
    return "native" if native else "Python"


Config = tuple[int, Sink, bool]  # senders, sink, native path


def _configs(quick: bool) -> list[Config]:
    """The configurations measured; the Python path only where the native one is built, as a
    comparison (it is what an agent without the extension runs)."""
    native = native_records is not None
    configs: list[Config]
    if quick:
        configs = [(2, "count", native), (2, "spool", native)]
    else:
        configs = [(1, "count", native), (4, "count", native), (4, "spool", native), (4, "send", native)]
    if native:
        configs += [(4, "count", False)] if quick else [(4, "count", False), (4, "spool", False)]
    return configs


def run(quick: bool = False) -> Section:
    """Rounds of one run per configuration (senders, sink, decoding path), interleaved; medians and
    ratios to the first configuration; then a profiled run of the first configuration's path."""
    total, rounds = (40_000, 1) if quick else (120_000, 3)
    configs = _configs(quick)
    outcomes: dict[Config, list[Outcome]] = {config: [] for config in configs}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="telltale-bench-") as tmp:
        workdir = Path(tmp)
        senders_kind = Senders.prepare(workdir)
        for n in range(rounds):
            for senders, sink_kind, native in configs:
                outcome = trio.run(
                    functools.partial(
                        _measure,
                        workdir,
                        senders,
                        total // senders,
                        sink_kind=sink_kind,
                        native=native,
                        senders_kind=senders_kind,
                    )
                )
                outcomes[senders, sink_kind, native].append(outcome)
                say(
                    f"  intake    round {n + 1}/{rounds}: {_senders(senders)}, {_path_name(native):6} "
                    f"{SINK_NAMES[sink_kind]:31} {rate(outcome.per_second):>10}  "
                    f"({outcome.cpu_share:.0%} of a core, RSS {outcome.rss_mb:.0f} MiB)"
                )
        profile_table, profile_note = _profile(
            workdir, 10_000 if quick else 25_000, configs[0][2], senders_kind
        )

    table = Table(
        (
            "senders",
            "decoding",
            "sink",
            "records delivered",
            "records/s (median)",
            "vs first row",
            "intake CPU",
            "records per intake CPU-second",
            "RSS after the run",
            "peak RSS so far",
            "malformed",
            "dropped",
            "goal ≥ 300k/s",
        )
    )
    first = outcomes[configs[0]]
    best = 0.0  # the goal's figure: through the batcher and the spool, on the first row's path
    for (senders, sink_kind, native), runs in outcomes.items():
        per_s = median([o.per_second for o in runs])
        if native == configs[0][2] and sink_kind == "spool":
            best = max(best, per_s)
        ratio = median([o.per_second / b.per_second for o, b in zip(runs, first, strict=True)])
        table.add(
            str(senders),
            _path_name(native),
            SINK_NAMES[sink_kind],
            f"{sum(o.delivered for o in runs):,} of {sum(o.sent for o in runs):,}",
            rate(per_s),
            "—" if runs is first else f"{ratio:.2f}x",
            f"{median([o.cpu_share for o in runs]):.0%} of a core",
            rate(median([o.per_cpu_second for o in runs])),
            f"{max(o.rss_mb for o in runs):.0f} MiB",
            f"{max(o.peak_rss_mb for o in runs):.0f} MiB",
            str(sum(o.malformed for o in runs)),
            str(sum(o.dropped for o in runs)),
            goal(per_s >= GOAL_RECORDS_PER_S),
        )
    for senders_cell, path, sink, _records, figure, versus, cpu, per_cpu, rss, peak, *_ in table.rows:
        who = _senders(int(senders_cell))
        say(
            f"  intake    {who:10} {path:6} {sink:31} {figure:>10}  "
            f"(vs first row {versus}, {cpu}, {per_cpu} per CPU-second, RSS {rss}, peak {peak})"
        )
    for function, own, inclusive in profile_table.rows:
        say(f"  intake    profile: {own:>4} own, {inclusive:>4} with callees  {function}")
    notes = [
        f"Best figure of the {_path_name(configs[0][2])} path through the batcher and the on-disk spool "
        f"{rate(best)}: the goal of 300k records/s on one core is {goal(best >= GOAL_RECORDS_PER_S)}. "
        "'intake CPU' is this process's CPU time "
        "over the run: near 100% means the intake, not the senders, sets the pace; 'records per intake "
        "CPU-second' divides the records by that CPU time, the rate of an intake given a whole core "
        "(the goal is judged on the wall-clock rate). 'RSS' is this "
        "process's resident memory after the run (the intake, the benchmark and, with the batcher, "
        "the spool's metadata and cache of recent batches); 'peak RSS so far' its highest resident "
        "memory up to the end of that configuration's last run (over every run before it too).",
        "Decoding 'native' is the extension telltale._native._records (native/recordsmodule.c): "
        "recvmmsg and record → serialized Event in C, a cached serialized prefix prepended in Python; "
        "events then stay bytes up to the spool (never parsed until the sender reads a batch back); "
        "'Python' is `records.decode` and `convert.to_event`, what an agent without the extension runs."
        if native_records is not None
        else "The native extension telltale._native._records is not built: only the Python path "
        "(`records.decode`, `convert.to_event`) was measured.",
        profile_note,
    ]
    for note in notes:
        say(f"  intake    {note}")
    return Section(
        title="Agent intake throughput",
        method=(
            "The real `Intake` (trio) on a SOCK_SEQPACKET socket in a temporary directory, fed by "
            "sender processes that each send a PROC_START with a workload descriptor and then "
            f"pre-encoded CONNECT records ({ADDRESSES} distinct addresses, repeated) with blocking sends "
            f"(senders: {senders_kind.name}; the C sender, bench/intake_sender.c, keeps up with the "
            "intake where a Python one on this machine's other core may not), "
            f"{total:,} records per run, {rounds} round{'s' if rounds > 1 else ''} of the configurations "
            "(interleaved when more than one). The "
            "figure is events delivered to the sink per second, from the go signal to the last event "
            "(median over rounds); through the batcher, events in the batches read back from the "
            "on-disk spool (a temporary directory), the last batch closed at once rather than at its "
            "age limit; 'malformed' and 'dropped' are the agent's counters (spool drops included)."
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
