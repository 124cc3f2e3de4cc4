"""What the shim adds to a hooked call: connect() timed inside a C program, with and without it.

Five variants of the same program (bench/shim_connect.c), run in turn — a, b, c, d, e, a, b, … —
so that the machine's noise hits each alike; each figure is the median over the repetitions and
each ratio the median of the per-repetition ratios to (a):

  (a) no shim;
  (b) the shim loaded without TELLTALE_SOCKET: inert, hooks only call through;
  (c) the shim reporting to a listening socket that a reader thread drains;
  (d) the shim configured with a socket path where nobody listens: records are dropped and counted;
  (e) no shim, the program traced by `strace -f` (skipped when strace is not installed).

The program also times, inside one process, batches of connect(AF_UNSPEC) — the cheapest hooked
call with a dedup hit — alternately through libc's own symbol and through the hook: the difference
is what the shim adds to one call, free of the noise between processes.

Run alone: `python -m bench.shim_overhead [--quick]`.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.cbuild import compile_program
from bench.results import Section, Table, goal, median, run_alone, say
from telltale._native import shim_path

VARIANTS = {
    "a": "(a) no shim",
    "b": "(b) shim, inert (no TELLTALE_SOCKET)",
    "c": "(c) shim, agent socket drained by a reader",
    "d": "(d) shim, nobody listening on the socket",
}
STRACE = "(e) strace -f, no shim"
GOAL_HIT_NS = 20  # added to a dedup hit of the cheapest hooked call
_SEQ_AND_DROPPED = struct.Struct("<II")  # header offsets 32 (dropped) and 36 (seq)


@dataclass
class Drain:
    """A SOCK_SEQPACKET listener whose connections a background thread reads and counts."""

    path: Path
    records: int = 0
    attempted: int = 0  # per connection, the highest seq seen, summed over closed connections
    dropped: int = 0  # per connection, the highest `dropped` seen, summed likewise
    _stop: threading.Event = field(default_factory=threading.Event)

    def serve(self, listener: socket.socket) -> None:
        """Accept and drain until stopped."""
        selector = selectors.DefaultSelector()
        selector.register(listener, selectors.EVENT_READ)
        highest: dict[socket.socket, tuple[int, int]] = {}
        while not self._stop.is_set():
            for key, _ in selector.select(timeout=0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is listener:
                    conn, _ = listener.accept()
                    conn.setblocking(False)
                    selector.register(conn, selectors.EVENT_READ)
                    highest[conn] = (0, 0)
                    continue
                if not self._read(sock, highest):
                    selector.unregister(sock)
                    seq, dropped = highest.pop(sock)
                    self.attempted += seq
                    self.dropped += dropped
                    sock.close()
        for sock in highest:
            sock.close()
        selector.close()

    def _read(self, sock: socket.socket, highest: dict[socket.socket, tuple[int, int]]) -> bool:
        """Drain what is queued; False once the peer has gone."""
        while True:
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not data:
                return False
            self.records += 1
            if len(data) >= 40:
                dropped, seq = _SEQ_AND_DROPPED.unpack_from(data, 32)
                old_seq, old_dropped = highest[sock]
                highest[sock] = (max(old_seq, seq), max(old_dropped, dropped))

    @contextlib.contextmanager
    def running(self) -> Iterator[Drain]:
        """Listen on `path` and drain in a thread for the duration of the block."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as listener:
            listener.bind(str(self.path))
            listener.listen(64)
            thread = threading.Thread(target=self.serve, args=(listener,), daemon=True)
            thread.start()
            try:
                yield self
            finally:
                self._stop.set()
                thread.join(timeout=5)


def _environments(workdir: Path, agent: Path) -> dict[str, dict[str, str]]:
    base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD",) and not k.startswith("TELLTALE_")}
    shim = {**base, "LD_PRELOAD": str(shim_path())}
    workload = "id=w-bench&app=bench"
    return {
        "a": base,
        "b": shim,
        "c": {**shim, "TELLTALE_SOCKET": str(agent), "TELLTALE_WORKLOAD": workload},
        "d": {**shim, "TELLTALE_SOCKET": str(workdir / "nobody.sock"), "TELLTALE_WORKLOAD": workload},
    }


def _run_once(
    program: Path, env: dict[str, str], hits: int, distinct: int, prefix: tuple[str, ...] = ()
) -> dict[str, float]:
    """ns/call of each loop of one run of the program (run under `prefix`, e.g. strace)."""
    out = subprocess.run(
        [*prefix, str(program), str(hits), str(distinct)], env=env, capture_output=True, text=True, check=True
    ).stdout
    figures = {}
    for line in out.splitlines():
        name, total_ns, calls = line.split()
        figures[name] = int(total_ns) / int(calls)
    return figures


def _strace_counts(program: Path, env: dict[str, str], hits: int, distinct: int, out: Path) -> Counter[str]:
    """System calls made by one run of the program, by name (strace -c)."""
    strace = shutil.which("strace")
    assert strace is not None
    subprocess.run(
        [strace, "-c", "-o", str(out), str(program), str(hits), str(distinct)],
        env=env,
        capture_output=True,
        check=True,
    )
    counts: Counter[str] = Counter()
    for line in out.read_text().splitlines():
        tokens = line.split()
        if len(tokens) >= 5 and tokens[3].isdigit() and tokens[-1] != "total":
            counts[tokens[-1]] = int(tokens[3])
    return counts


def _describe(extra: dict[str, float]) -> str:
    """'3 (getsockopt x2, sendto)' from per-call counts by name; '0' when nothing is added."""
    kept = {name: n for name, n in sorted(extra.items()) if round(n) != 0}
    if not kept:
        return "0"
    parts = [name if round(n) == 1 else f"{name} x{round(n)}" for name, n in kept.items()]
    return f"{round(sum(kept.values()))} ({', '.join(parts)})"


def _syscall_table(program: Path, envs: dict[str, dict[str, str]], workdir: Path) -> Table:
    """System calls each variant adds to a dedup hit and to a record sent, counted with strace.

    Each is a difference of two runs of the same variant (so start-up and exit cancel out) minus the
    same difference for (a).
    """
    hits, sent = 2000, 250
    per_hit: dict[str, dict[str, float]] = {}
    per_sent: dict[str, dict[str, float]] = {}
    for variant, env in envs.items():
        out = workdir / f"strace-{variant}.txt"
        base = _strace_counts(program, env, 1, 1, out)
        more_hits = _strace_counts(program, env, 1 + hits, 1, out)
        more_sent = _strace_counts(program, env, 1, 1 + sent, out)
        names = set(base) | set(more_hits) | set(more_sent)
        per_hit[variant] = {n: (more_hits[n] - base[n]) / hits for n in names}
        per_sent[variant] = {n: (more_sent[n] - base[n]) / sent for n in names}
    table = Table(("variant", "system calls added to a dedup hit", "system calls added to a record sent"))
    for variant, label in VARIANTS.items():
        if variant == "a":
            continue
        names = set(per_hit[variant]) | set(per_hit["a"]) | set(per_sent[variant]) | set(per_sent["a"])
        hit = {n: per_hit[variant].get(n, 0.0) - per_hit["a"].get(n, 0.0) for n in names}
        sent_extra = {n: per_sent[variant].get(n, 0.0) - per_sent["a"].get(n, 0.0) for n in names}
        table.add(label, _describe(hit), _describe(sent_extra))
    table.title = "System calls added per call (strace -c, beyond what (a) makes)"
    return table


def _versus(values: list[float], baseline: list[float]) -> str:
    ratio = median([v / b for v, b in zip(values, baseline, strict=True)])
    added = median([v - b for v, b in zip(values, baseline, strict=True)])
    return f"{ratio:.2f}x ({added:+.0f} ns)"


def _added(samples: dict[str, list[float]]) -> float:
    """Median over runs of the in-process difference hook minus libc (ns per call)."""
    return median([h - d for h, d in zip(samples["ab_hooked"], samples["ab_libc"], strict=True)])


def _side_by_side(samples: dict[str, dict[str, list[float]]], traced: dict[str, list[float]] | None) -> Table:
    """One connect loop, per call: no shim, dedup hit, every call sent, strace -f."""
    base = samples["a"]["hit"]
    rows: list[tuple[str, list[float], list[float]]] = [
        ("no shim", base, base),
        ("shim, dedup hit (c)", samples["c"]["hit"], base),
        ("shim, every call sent (c, distinct addresses)", samples["c"]["distinct"], samples["a"]["distinct"]),
    ]
    if traced is not None:
        rows.append(("strace -f, no shim (e)", traced["hit"], base))
    table = Table(("connect() on a UDP socket", "ns/call", "vs no shim"))
    for label, values, baseline in rows:
        table.add(label, f"{median(values):.0f}", "—" if values is baseline else _versus(values, baseline))
    table.title = "Per intercepted call, side by side"
    return table


def _cheapest(samples: dict[str, dict[str, list[float]]]) -> tuple[Table, float]:
    """connect(AF_UNSPEC): loop medians per variant and the in-process hook minus libc difference."""
    table = Table(
        (
            "variant",
            "connect(AF_UNSPEC): ns/call",
            "vs (a)",
            "in-process: hook minus libc, ns/call",
        )
    )
    hit_added = _added(samples["c"])
    for variant, label in VARIANTS.items():
        got = samples[variant]
        table.add(
            label,
            f"{median(got['unspec']):.0f}",
            "—" if variant == "a" else _versus(got["unspec"], samples["a"]["unspec"]),
            f"{_added(got):+.1f}",
        )
    table.title = (
        f"The cheapest hooked call with a dedup hit: goal ≤ {GOAL_HIT_NS} ns added — "
        f"{goal(hit_added <= GOAL_HIT_NS)} ({hit_added:+.1f} ns in (c))"
    )
    return table, hit_added


def run(quick: bool = False) -> Section:
    """Interleaved repetitions of the four variants; medians and per-repetition ratios to (a)."""
    reps, hits, distinct = (5, 50_000, 250) if quick else (15, 200_000, 250)
    strace = shutil.which("strace")
    strace_hits = max(hits // 20, 1000)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="telltale-bench-") as tmp:
        workdir = Path(tmp)
        program = compile_program("shim_connect.c", workdir)
        with Drain(workdir / "agent.sock").running() as drain:
            envs = _environments(workdir, drain.path)
            samples: dict[str, dict[str, list[float]]] = {v: {} for v in VARIANTS}
            traced: dict[str, list[float]] | None = {} if strace else None
            for rep in range(reps):
                for variant, env in envs.items():
                    for name, ns in _run_once(program, env, hits, distinct).items():
                        samples[variant].setdefault(name, []).append(ns)
                if traced is not None and strace is not None:
                    prefix = (strace, "-f", "-qq", "-o", os.devnull)
                    for name, ns in _run_once(program, envs["a"], strace_hits, distinct, prefix).items():
                        traced.setdefault(name, []).append(ns)
                line = "  ".join(
                    f"{v}: hit {samples[v]['hit'][-1]:6.0f} sent {samples[v]['distinct'][-1]:6.0f}"
                    for v in VARIANTS
                )
                if traced is not None:
                    line += f"  e: hit {traced['hit'][-1]:6.0f}"
                added = samples["c"]["ab_hooked"][-1] - samples["c"]["ab_libc"][-1]
                say(f"  shim      rep {rep + 1:2}/{reps}  ns/call  {line}  (c) hook-libc {added:+.1f}")
            # Wait (briefly) for the reader to see the last connection close.
            deadline = time.monotonic() + 5
            while drain.attempted < drain.records and time.monotonic() < deadline:
                time.sleep(0.01)
            records, attempted, dropped = drain.records, drain.attempted, drain.dropped
            syscalls = _syscall_table(program, envs, workdir) if strace else None

    base = samples["a"]
    table = Table(
        (
            "variant",
            "dedup hit: ns/call",
            "vs (a)",
            f"record sent ({distinct} addresses): ns/call",
            "vs (a)",
        )
    )
    for variant, label in VARIANTS.items():
        got = samples[variant]
        table.add(
            label,
            f"{median(got['hit']):.0f}",
            "—" if variant == "a" else _versus(got["hit"], base["hit"]),
            f"{median(got['distinct']):.0f}",
            "—" if variant == "a" else _versus(got["distinct"], base["distinct"]),
        )
    sockopt = median([ns for v in VARIANTS for ns in samples[v]["sockopt"]])
    delivered = records / attempted if attempted else 0.0
    cheapest, hit_added = _cheapest(samples)
    notes = [
        f"A dedup hit learns the socket's type from the shim's descriptor table, without the "
        f"`getsockopt(SO_TYPE)` system call it used to make ({sockopt:.0f} ns on this machine, median "
        "over every run); a first occurrence still makes it, to check the cached type.",
        f"The cheapest hooked call with a dedup hit is connect(AF_UNSPEC) on a UDP socket: the shim "
        f"adds {hit_added:+.1f} ns to it in (c) (in-process, median over runs of the median batch); "
        f"the inert shim (b), interposition alone, adds {_added(samples['b']):+.1f} ns; without the "
        f"shim (a) the two paths differ by {_added(samples['a']):+.1f} ns.",
        f"In (c) the reader received {records:,} of the {attempted:,} records the shim "
        f"attempted ({delivered:.1%}); {dropped:,} were dropped by the shim because the socket "
        "was full. A dropped record costs less than a delivered one.",
        "In (d) the shim tries to connect at most once a second and drops the records in between.",
        "Ratios are medians of per-repetition ratios, so (a) and the variant come from the same "
        "repetition; `+N ns` is the median per-call difference.",
    ]
    tables = [_side_by_side(samples, traced), cheapest, table]
    if traced is not None:
        ratio = median([t / b for t, b in zip(traced["hit"], samples["a"]["hit"], strict=True)])
        notes.append(
            f"Under `strace -f` (e) the same connect loop ({strace_hits:,} calls a run) costs "
            f"{median(traced['hit']):,.0f} ns/call: {ratio:.0f}x the bare call, against "
            f"{median([c / b for c, b in zip(samples['c']['hit'], samples['a']['hit'], strict=True)]):.2f}x "
            "with the shim."
        )
    else:
        notes.append("strace was not found: the strace -f variant (e) was skipped.")
    if syscalls is not None:
        tables.append(syscalls)
        for row in syscalls.rows:
            say(f"  shim      {row[0]:44} syscalls added: hit {row[1]}; sent {row[2]}")
    else:
        notes.append("strace was not found: system calls per call were not counted.")
    for note in notes:
        say(f"  shim      {note}")
    for variant, label in VARIANTS.items():
        say(
            f"  shim      {label:44} hit {median(samples[variant]['hit']):6.0f} ns   "
            f"sent {median(samples[variant]['distinct']):6.0f} ns"
        )
    return Section(
        title="Shim overhead per call",
        method=(
            f"`bench/shim_connect.c`, built with gcc -O2, times `connect()` on one UDP socket from inside "
            f"the process: {hits:,} calls to one address after a first untimed one (with the shim, each "
            f"is a dedup hit: counted, not sent), {hits:,} calls with an AF_UNSPEC address (the cheapest "
            f"connect), and one call to each of {distinct} distinct addresses "
            "(with the shim, each is a first occurrence: a record is built and sent); then, in the same "
            "process, alternate batches of 250 AF_UNSPEC connects through libc's own symbol and through "
            "the hook. Variants run "
            f"interleaved — a, b, c, d, e, a, b, … — for {reps} repetitions; figures are medians. "
            "(a) no shim; (b) shim without TELLTALE_SOCKET (inert); (c) shim with an agent socket "
            "drained by a reader thread; (d) shim with a socket path where nobody listens; (e) no shim, "
            f"under `strace -f -o /dev/null` ({strace_hits:,} calls a loop)."
        ),
        tables=tables,
        notes=notes,
        seconds=time.perf_counter() - started,
    )


def main() -> None:
    run_alone(run, __doc__, "fewer calls and repetitions")


if __name__ == "__main__":
    main()
