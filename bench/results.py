"""What a benchmark returns: tables of figures and notes, plus the progress printer and small
statistics shared by the benchmarks."""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass
class Table:
    """One table of a report: column headings and rows of already formatted cells."""

    columns: tuple[str, ...]
    rows: list[tuple[str, ...]] = field(default_factory=list)
    title: str = ""

    def add(self, *cells: str) -> None:
        """Append a row; raises ValueError when it has the wrong number of cells."""
        if len(cells) != len(self.columns):
            raise ValueError(f"row has {len(cells)} cells, the table has {len(self.columns)} columns")
        self.rows.append(cells)


@dataclass
class Section:
    """The outcome of one benchmark: what it measures, its tables, notes, and how long it took."""

    title: str
    method: str
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def say(text: str) -> None:
    """Print one progress line at once (benchmarks print each figure as it is measured)."""
    print(text, flush=True)
    sys.stdout.flush()


def percentile(values: Sequence[float], fraction: float) -> float:
    """The `fraction` quantile (0..1) of `values` with linear interpolation; ValueError when empty."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[float]) -> float:
    """The median of `values`; ValueError when empty."""
    if not values:
        raise ValueError("no values")
    return statistics.median(values)


def rate(per_second: float) -> str:
    """A rate with a k or M suffix: 1234567 -> '1.23 M/s'."""
    if per_second >= 1e6:
        return f"{per_second / 1e6:.2f} M/s"
    if per_second >= 1e3:
        return f"{per_second / 1e3:.0f} k/s"
    return f"{per_second:.0f} /s"


def goal(met: bool) -> str:
    """The verdict cell of a goal."""
    return "met" if met else "not met"


def run_alone(run: Callable[[bool], Section], doc: str | None, quick_help: str) -> None:
    """Runs one benchmark as a program of its own (`python -m bench.NAME [--quick]`): `doc`, the
    module's docstring, is the --help text, kept as written; `quick_help` says what --quick cuts."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    run(parser.parse_args().quick)
