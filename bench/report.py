"""The machine description and the BENCHMARKS.md document."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.results import Section, Table


@dataclass(frozen=True)
class Machine:
    """Where the figures were measured."""

    cores: int
    usable_cores: int
    cpu_model: str
    kernel: str
    python: str

    @classmethod
    def current(cls) -> Machine:
        """Describe this machine from os, platform and /proc/cpuinfo."""
        return cls(
            cores=os.cpu_count() or 0,
            usable_cores=len(os.sched_getaffinity(0)),
            cpu_model=_cpu_model(),
            kernel=f"{platform.system()} {platform.release()}",
            python=f"{platform.python_implementation()} {platform.python_version()}",
        )

    def lines(self) -> list[str]:
        """One `key: value` line per property."""
        return [
            f"cores: {self.cores} ({self.usable_cores} usable by this process)",
            f"CPU: {self.cpu_model}",
            f"kernel: {self.kernel}",
            f"Python: {self.python}",
        ]


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "cpu model"):
            return value.strip()
    return platform.processor() or "unknown"


def _numeric(cell: str) -> bool:
    return cell[:1].isdigit() or cell[:1] in "+-—"


def _table(table: Table) -> list[str]:
    """Markdown lines; columns whose every cell starts like a number are right-aligned."""
    lines = [f"**{table.title}**", ""] if table.title else []
    lines.append("| " + " | ".join(table.columns) + " |")
    aligns = [
        "---:" if table.rows and all(_numeric(row[i]) for row in table.rows) else "---"
        for i in range(len(table.columns))
    ]
    lines.append("|" + "|".join(aligns) + "|")
    lines.extend("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in table.rows)
    return [*lines, ""]


def render(
    sections: Sequence[Section], *, command: str, machine: Machine, started: datetime, seconds: float
) -> str:
    """The whole BENCHMARKS.md text."""
    lines = [
        "# Benchmarks",
        "",
        "Written by `bench/run.py`; run it again to refresh this file. Figures are measurements on",
        "one shared machine, not guarantees: compare ratios measured side by side in one run rather",
        "than absolute figures across runs.",
        "",
        f"- command: `{command}`",
        f"- date: {started.astimezone(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        *(f"- {line}" for line in machine.lines()),
        f"- duration: {seconds:.0f} s",
        "",
    ]
    for number, section in enumerate(sections, 1):
        lines += [f"## {number}. {section.title}", "", section.method, ""]
        for table in section.tables:
            lines += _table(table)
        lines += [f"- {note}" for note in section.notes]
        lines += [f"- measured in {section.seconds:.1f} s", ""]
    return "\n".join(lines).rstrip() + "\n"
