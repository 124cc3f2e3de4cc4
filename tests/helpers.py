"""Helpers shared by test modules (importable as `helpers`: tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import sys
from pathlib import Path

WORKLOADS = Path(__file__).parent / "workloads"


def behave(*args: str) -> list[str]:
    """The command line of the test workload (tests/workloads/behave.py) with these arguments."""
    return [sys.executable, str(WORKLOADS / "behave.py"), *args]
