"""Throughput of the agent's record decoder (`telltale.nodeagent.records.decode`), one thread.

Also measured: decode followed by the conversion to a protobuf Event (`convert.to_event`), which is
what the agent's intake does with every record. Run alone: `python -m bench.decode [--quick]`.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from bench import recordgen
from bench.results import Section, Table, median, rate, say
from telltale.nodeagent.convert import to_event
from telltale.nodeagent.records import decode
from telltale.v1 import common_pb2

PID = 4242


def _decode_all(messages: list[bytes]) -> None:
    for m in messages:
        decode(m)


def _decode_and_convert(messages: list[bytes]) -> None:
    process = common_pb2.ProcessInfo(pid=PID, exe="/usr/bin/python3.11")
    for m in messages:
        to_event(decode(m), "w-bench", process)


def _measure(work: Callable[[list[bytes]], None], messages: list[bytes], rounds: int) -> float:
    """Median records/s over `rounds` passes, after one warm-up pass."""
    work(messages)
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        work(messages)
        rates.append(len(messages) / (time.perf_counter() - start))
    return median(rates)


def run(quick: bool = False) -> Section:
    """Decode lists of pre-encoded records; the median pass is the figure."""
    n, rounds = (20_000, 3) if quick else (100_000, 7)
    repeating = recordgen.connects(PID, 1000) * (n // 1000)
    distinct = recordgen.connects(PID, n)
    starts = [recordgen.proc_start(PID)] * n
    cases: list[tuple[str, Callable[[list[bytes]], None], list[bytes]]] = [
        ("CONNECT, 1,000 addresses repeating (address cache hits)", _decode_all, repeating),
        ("CONNECT, a new address every record (cache misses)", _decode_all, distinct),
        ("PROC_START (workload, exe, cwd, 5 argv, creds)", _decode_all, starts),
        ("CONNECT, repeating addresses: decode + to_event", _decode_and_convert, repeating),
        ("PROC_START: decode + to_event", _decode_and_convert, starts),
    ]
    table = Table(("records", "size", "records/s", "µs/record"))
    started = time.perf_counter()
    for label, work, messages in cases:
        per_s = _measure(work, messages, rounds)
        table.add(label, f"{len(messages[0])} B", rate(per_s), f"{1e6 / per_s:.2f}")
        say(f"  decode    {label:58} {rate(per_s):>10}  {1e6 / per_s:5.2f} µs")
    return Section(
        title="Record decoder throughput",
        method=(
            f"`records.decode` over {n:,} pre-encoded records built from shim/FORMAT.md, in one thread, "
            f"{rounds} passes after a warm-up pass; the figure is the median pass. The last two rows add "
            "`convert.to_event`, the intake's next step."
        ),
        tables=[table],
        seconds=time.perf_counter() - started,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer records and passes")
    run(parser.parse_args().quick)


if __name__ == "__main__":
    main()
