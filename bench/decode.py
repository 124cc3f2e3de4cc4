"""Throughput of the agent's record decoder (`telltale.nodeagent.records.decode`), one thread.

Also measured: decode followed by the conversion to a protobuf Event (`convert.to_event`), which is
what the agent's intake does with every record when the native extension is not built, and, when it
is, the native fast path (telltale._native._records.encode, then `Event.FromString` of the event
prefix and the encoded body). Run alone: `python -m bench.decode [--quick]`.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from bench import recordgen
from bench.results import Section, Table, median, rate, say
from telltale.nodeagent.convert import event_prefix, to_event
from telltale.nodeagent.records import decode
from telltale.v1 import common_pb2

try:
    from telltale._native import _records as native_records
except ImportError:  # not built: only the Python path is measured
    native_records = None  # type: ignore[assignment]

PID = 4242


def _decode_all(messages: list[bytes]) -> None:
    for m in messages:
        decode(m)


def _decode_and_convert(messages: list[bytes]) -> None:
    process = common_pb2.ProcessInfo(pid=PID, exe="/usr/bin/python3.11")
    for m in messages:
        to_event(decode(m), "w-bench", process)


def _native_encode_and_parse(messages: list[bytes]) -> None:
    native = native_records
    assert native is not None
    encode = native.encode
    from_string = common_pb2.Event.FromString
    prefix = event_prefix("w-bench", common_pb2.ProcessInfo(pid=PID, exe="/usr/bin/python3.11"))
    for m in messages:
        item = encode(m)
        if isinstance(item, tuple):
            from_string(prefix + item[4])
        else:
            to_event(decode(item), "w-bench", None)


def _pass(work: Callable[[list[bytes]], None], messages: list[bytes]) -> float:
    """One pass: records/s."""
    start = time.perf_counter()
    work(messages)
    return len(messages) / (time.perf_counter() - start)


def run(quick: bool = False) -> Section:
    """Rounds of one pass per case, interleaved; the median round is each case's figure."""
    n, rounds = (10_000, 3) if quick else (20_000, 7)
    repeating = recordgen.connects(PID, 1000) * (n // 1000)
    distinct = recordgen.connects(PID, n)
    starts = [recordgen.proc_start(PID)] * n
    cases: dict[str, tuple[Callable[[list[bytes]], None], list[bytes]]] = {
        "CONNECT, 1,000 addresses repeating (address cache hits)": (_decode_all, repeating),
        "CONNECT, a new address every record (cache misses)": (_decode_all, distinct),
        "PROC_START (workload, exe, cwd, 5 argv, creds)": (_decode_all, starts),
        "CONNECT, repeating addresses: decode + to_event": (_decode_and_convert, repeating),
        "PROC_START: decode + to_event": (_decode_and_convert, starts),
    }
    if native_records is not None:
        cases["CONNECT, repeating addresses: native encode + Event.FromString"] = (
            _native_encode_and_parse,
            repeating,
        )
    started = time.perf_counter()
    for work, messages in cases.values():  # warm-up
        work(messages)
    rates: dict[str, list[float]] = {label: [] for label in cases}
    for _ in range(rounds):
        for label, (work, messages) in cases.items():
            rates[label].append(_pass(work, messages))
    first = next(iter(rates.values()))
    table = Table(("records", "size", "records/s", "µs/record", "time vs first row"))
    for label, values in rates.items():
        per_s = median(values)
        slower = median([b / v for v, b in zip(values, first, strict=True)])
        size = len(cases[label][1][0])
        table.add(label, f"{size} B", rate(per_s), f"{1e6 / per_s:.2f}", f"{slower:.2f}x")
        say(f"  decode    {label:58} {rate(per_s):>10}  {1e6 / per_s:5.2f} µs  ({slower:.2f}x first row)")
    return Section(
        title="Record decoder throughput",
        method=(
            f"`records.decode` over {n:,} pre-encoded records built from shim/FORMAT.md, in one thread. "
            f"After a warm-up pass, {rounds} rounds of one pass per case, interleaved; the figure is the "
            "median round, and 'time vs first row' the median of per-round ratios of time per record. "
            "The next two rows add `convert.to_event`, the intake's next step; the last row, when the "
            "native extension is built, is its fast path instead (record → serialized Event in C, "
            "parsed with `Event.FromString`)."
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
