"""Run every benchmark, print each figure as it is measured, and (re)write BENCHMARKS.md.

    python bench/run.py            # a few minutes
    python bench/run.py --quick    # under a minute: a small machine or a CI smoke run

Timings are reported, never asserted. A benchmark that fails is reported as failed in the document
and makes the command exit with status 1; the others still run.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
import time
import traceback
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # so that `python bench/run.py` finds the bench package

# In the order of the document: module under bench/, what it measures.
BENCHMARKS = (
    ("evaluate", "policy evaluation throughput"),
    ("shim_overhead", "shim overhead per call"),
    ("shim_real", "shim cost in a real server and at startup"),
    ("decode", "record decoder throughput"),
    ("intake", "agent intake throughput"),
    ("latency", "end-to-end alert latency"),
    ("fleet", "fleet scale: agents per controller, policy propagation, event load"),
    ("enforce", "network enforcement apply time"),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes: the whole run takes under a minute"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=REPO / "BENCHMARKS.md",
        help="the document to write (default: BENCHMARKS.md at the repository root)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=[name for name, _ in BENCHMARKS],
        help="run only these benchmarks",
    )
    args = parser.parse_args(argv)

    results = importlib.import_module("bench.results")
    report = importlib.import_module("bench.report")
    machine = report.Machine.current()
    command = shlex.join(["python", "bench/run.py", *(sys.argv[1:] if argv is None else argv)])
    started_at = datetime.now().astimezone()
    started = time.perf_counter()
    results.say(f"telltale benchmarks ({'quick' if args.quick else 'default'} mode): {command}")
    for line in machine.lines():
        results.say(f"  {line}")

    sections = []
    failed = []
    for name, what in BENCHMARKS:
        if args.only and name not in args.only:
            continue
        results.say(f"\n== {what} (bench/{name}.py)")
        begun = time.perf_counter()
        try:
            section = importlib.import_module(f"bench.{name}").run(quick=args.quick)
        except Exception as exc:  # report the failure, run the rest
            traceback.print_exc()
            failed.append(name)
            section = results.Section(
                title=what[0].upper() + what[1:],
                method=f"`bench/{name}.py` **failed**: `{type(exc).__name__}: {exc}`",
            )
        section.seconds = time.perf_counter() - begun
        results.say(f"   ({section.seconds:.1f} s)")
        sections.append(section)

    seconds = time.perf_counter() - started
    text = report.render(sections, command=command, machine=machine, started=started_at, seconds=seconds)
    args.output.write_text(text)
    results.say(
        f"\nwrote {args.output} in {seconds:.0f} s" + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
