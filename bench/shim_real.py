"""What the shim costs a real program: a server's throughput under load, and a short program's start.

  - redis-server (Debian's `redis-server`) on a loopback port, loaded by `redis-benchmark` (GET and
    SET, pipelined), bare and with the shim reporting to a drained agent socket. The two variants
    alternate round by round, each round with a fresh server; the figure is the median of the
    per-round ratios shim/bare. Goal: at least 98 % of bare throughput. Skipped when redis-server
    or redis-benchmark is not installed.
  - /bin/true started bare, with the inert shim, and with the shim reporting (it sends its
    PROC_START at start), interleaved run by run; the figure is the median wall time from spawn to
    exit, measured with perf_counter.

Run alone: `python -m bench.shim_real [--quick]`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.results import Section, Table, goal, median, percentile, rate, run_alone, say
from bench.shim_overhead import Drain
from telltale._native import shim_path

GOAL_THROUGHPUT = 0.98
TESTS = ("SET", "GET")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "LD_PRELOAD" and not k.startswith("TELLTALE_")}


def _shim_env(agent: Path | None) -> dict[str, str]:
    env = {**_clean_env(), "LD_PRELOAD": str(shim_path())}
    if agent is not None:
        env.update(TELLTALE_SOCKET=str(agent), TELLTALE_WORKLOAD="id=w-bench&app=bench")
    return env


@dataclass
class _Server:
    """A running redis-server child: its port, and once it has exited, the CPU time it used."""

    port: int
    cpu_seconds: float = 0.0


def _reap(pid: int, timeout: float) -> float | None:
    """CPU seconds (user + system) of child `pid` once it has exited; None if it is still running
    after `timeout` seconds (0: do not wait)."""
    deadline = time.monotonic() + timeout
    while True:
        done, _, usage = os.wait4(pid, os.WNOHANG)
        if done == pid:
            return float(usage.ru_utime + usage.ru_stime)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)


# With two usable CPUs or more, the server and the load generator each get their own, so that
# neither's scheduling noise lands on the other's measurements.
SERVER_CPU, LOAD_CPU = 0, 1


def _pinned(cpu: int, argv: list[str]) -> list[str]:
    """`argv` run on CPU `cpu` through taskset, when there are two CPUs to share out; else as is."""
    taskset = shutil.which("taskset")
    usable = sorted(os.sched_getaffinity(0))
    if taskset is None or len(usable) < 2:
        return argv
    return [taskset, "-c", str(usable[cpu]), *argv]


@contextlib.contextmanager
def _redis(server: str, env: dict[str, str], workdir: Path) -> Iterator[_Server]:
    """A redis-server child on a free loopback port, without persistence; yields it once it
    answers, and always stops it (then its CPU time is known)."""
    port = _free_port()
    argv = [
        server,
        *("--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
        *("--daemonize", "no", "--dir", str(workdir), "--logfile", ""),
    ]
    quiet = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
    argv = _pinned(SERVER_CPU, argv)
    pid = os.posix_spawn(argv[0], argv, env, file_actions=quiet)
    running = _Server(port)
    exited = False
    try:
        deadline = time.monotonic() + 10
        while True:
            if _reap(pid, 0) is not None:
                exited = True
                raise RuntimeError("redis-server exited before answering")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not answer within 10 s") from None
                time.sleep(0.02)
        yield running
    finally:
        if not exited:
            os.kill(pid, signal.SIGTERM)
            cpu = _reap(pid, 10)
            if cpu is None:
                os.kill(pid, signal.SIGKILL)
                cpu = _reap(pid, 60)
            running.cpu_seconds = cpu or 0.0


def _load(benchmark: str, port: int, requests: int) -> dict[str, float]:
    """Requests per second of each test, from redis-benchmark's CSV output."""
    out = subprocess.run(
        _pinned(
            LOAD_CPU,
            [
                benchmark,
                *("-h", "127.0.0.1", "-p", str(port), "-q", "--csv", "-t", "set,get"),
                *("-n", str(requests), "-P", "16", "-c", "50"),
            ],
        ),
        env=_clean_env(),
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    got = {}
    for line in out.splitlines():
        cells = [c.strip('"') for c in line.split(",")]
        if len(cells) >= 2 and cells[0] in TESTS:
            got[cells[0]] = float(cells[1])
    if set(got) != set(TESTS):
        raise RuntimeError(f"unexpected redis-benchmark output: {out!r}")
    return got


def _redis_section(quick: bool, drain: Drain, workdir: Path) -> tuple[Table | None, list[str]]:
    server, benchmark = shutil.which("redis-server"), shutil.which("redis-benchmark")
    if server is None or benchmark is None:
        return None, [
            "redis-server or redis-benchmark was not found (Debian: `apt-get install redis-server "
            "redis-tools`): the real-server figures were skipped."
        ]
    rounds, requests = (3, 200_000) if quick else (20, 300_000)
    variants = {"bare": _clean_env(), "shim": _shim_env(drain.path)}
    records_before = drain.records
    rps: dict[str, dict[str, list[float]]] = {v: {t: [] for t in TESTS} for v in variants}
    cpu: dict[str, list[float]] = {v: [] for v in variants}  # server CPU seconds per request
    for n in range(rounds):
        order = list(variants) if n % 2 == 0 else list(reversed(variants))
        for variant in order:
            with _redis(server, variants[variant], workdir) as running:
                for test, value in _load(benchmark, running.port, requests).items():
                    rps[variant][test].append(value)
            cpu[variant].append(running.cpu_seconds / (requests * len(TESTS)))
        say(
            f"  real      redis round {n + 1}/{rounds}  "
            + "  ".join(f"{t} bare {rate(rps['bare'][t][-1])} shim {rate(rps['shim'][t][-1])}" for t in TESTS)
            + f"  CPU/request bare {cpu['bare'][-1] * 1e9:,.0f} ns shim {cpu['shim'][-1] * 1e9:,.0f} ns"
        )
    table = Table(
        (
            "redis-benchmark test",
            "bare: requests/s",
            "with the shim: requests/s",
            "shim / bare",
            "per-round ratios, middle half",
            "goal",
        )
    )
    for test in TESTS:
        ratios = [s / b for s, b in zip(rps["shim"][test], rps["bare"][test], strict=True)]
        ratio = median(ratios)
        table.add(
            test,
            rate(median(rps["bare"][test])),
            rate(median(rps["shim"][test])),
            f"{ratio:.1%}",
            f"{percentile(ratios, 0.25):.0%} to {percentile(ratios, 0.75):.0%}",
            f"≥ {GOAL_THROUGHPUT:.0%}: {goal(ratio >= GOAL_THROUGHPUT)}",
        )
    capacity = [b / s for s, b in zip(cpu["shim"], cpu["bare"], strict=True)]
    table.add(
        "SET + GET, by the server's CPU time per request",
        f"{median(cpu['bare']) * 1e9:,.0f} ns/request",
        f"{median(cpu['shim']) * 1e9:,.0f} ns/request",
        f"{median(capacity):.1%}",
        f"{percentile(capacity, 0.25):.0%} to {percentile(capacity, 0.75):.0%}",
        f"≥ {GOAL_THROUGHPUT:.0%}: {goal(median(capacity) >= GOAL_THROUGHPUT)}",
    )
    table.title = "A real server under load: redis-server"
    note = (
        f"redis-server {_version(server)} on a loopback port, `--save '' --appendonly no`, a fresh "
        f"server per round; `redis-benchmark -t set,get -n {requests:,} -P 16 -c 50`, run bare; "
        f"{rounds} rounds alternating bare and shim (which goes first alternates too); "
        + ("the server and redis-benchmark each pinned to one CPU with taskset. " if _pinned(0, []) else "")
        + "The shim "
        "reports to a socket drained by a reader thread, which received "
        f"{drain.records - records_before:,} records from the servers. Ratios are medians of "
        "per-round ratios."
    )
    cpu_note = (
        "The last row divides the server's CPU time (user + system, from wait4) by the requests it "
        "served: its ratio, bare over shim, is the throughput one CPU-second buys with the shim "
        "relative to bare, and is less disturbed than wall-clock throughput by other processes "
        "sharing the machine's cores."
    )
    return table, [note, cpu_note]


def _version(server: str) -> str:
    out = subprocess.run([server, "--version"], capture_output=True, text=True, check=False).stdout
    for word in out.split():
        if word.startswith("v="):
            return word[2:]
    return "(unknown version)"


def _spawn_seconds(argv: list[str], env: dict[str, str]) -> float:
    """Wall time from spawn to exit of one run (posix_spawn, then waitpid)."""
    started = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, env)
    _, status = os.waitpid(pid, 0)
    elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{argv[0]} failed with status {status}")
    return elapsed


def _startup_section(quick: bool, agent: Path) -> tuple[Table, list[str]]:
    runs = 60 if quick else 300
    program = [os.path.realpath("/bin/true")]
    variants = {
        "bare": _clean_env(),
        "shim, inert (no TELLTALE_SOCKET)": _shim_env(None),
        "shim, reporting to a drained socket": _shim_env(agent),
    }
    for env in variants.values():  # warm the page cache and the loader
        _spawn_seconds(program, env)
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(runs):
        for variant, env in variants.items():
            times[variant].append(_spawn_seconds(program, env))
    bare = times["bare"]
    table = Table(("/bin/true", "median wall time", "added (median of per-run differences)"))
    for variant, values in times.items():
        added = median([v - b for v, b in zip(values, bare, strict=True)])
        table.add(
            variant, f"{median(values) * 1e6:,.0f} µs", "—" if values is bare else f"{added * 1e6:+,.0f} µs"
        )
        say(f"  real      start {variant:40} {median(values) * 1e6:8,.0f} µs")
    table.title = "Startup cost added to a short program"
    note = (
        f"`{program[0]}` started {runs} times per variant with posix_spawn and waited for, the "
        "variants interleaved run by run; wall time measured with perf_counter in the parent."
    )
    return table, [note]


def run(quick: bool = False) -> Section:
    """A real server's throughput and a short program's start, with and without the shim."""
    started = time.perf_counter()
    tables: list[Table] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="telltale-bench-") as tmp:
        workdir = Path(tmp)
        with Drain(workdir / "agent.sock").running() as drain:
            redis_table, redis_notes = _redis_section(quick, drain, workdir)
            startup_table, startup_notes = _startup_section(quick, drain.path)
    if redis_table is not None:
        tables.append(redis_table)
    tables.append(startup_table)
    notes += redis_notes + startup_notes
    for note in notes:
        say(f"  real      {note}")
    return Section(
        title="Shim cost in a real server and at startup",
        method=(
            "redis-server under redis-benchmark load, bare and with the shim, in alternating rounds; "
            "/bin/true started bare, with the inert shim and with the shim reporting, interleaved. "
            "See the notes for sizes."
        ),
        tables=tables,
        notes=notes,
        seconds=time.perf_counter() - started,
    )


def main() -> None:
    run_alone(run, __doc__, "fewer rounds and requests")


if __name__ == "__main__":
    main()
